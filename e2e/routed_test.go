package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/agent"
	"github.com/torpor-hpc/torpor/shim/sandbox"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// An Open MPI job on hosts that share no L2 segment (each host on a subnet
// of its own behind a router; torpor shim --vxlan), with job-node addresses
// from a network no host has (torpor coordinator --node-net): it runs, is
// checkpointed, has job-nodes migrated with stop-copy and with post-copy
// (the page server's traffic crosses the overlay too) and restarted on
// other hosts, and ends with the undisturbed checksum.
func TestRoutedCluster(t *testing.T) {
	c := newRoutedCluster(t, 5, "--node-net", "10.99.0.0/16")
	fabric, err := netquiesce.OpenNamedNet(simhost.NetNSName(c.sim.Name, "fabric"))
	if err != nil {
		t.Fatal(err)
	}
	defer fabric.Close()
	if _, err := fabric.Link("fab0"); err == nil {
		t.Fatal("the routed cluster's fabric has a bridge")
	}
	want := faultReference(t)
	j := c.faultJob("rt")
	c.criuLogsOnFailure("rt", "n0")
	j.progress("started on h1,h2,h3")
	sb, err := netquiesce.OpenNamedNet(c.sim.Host(1).NetNS + "-" + j.id + "-n0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := sb.Addrs(sandbox.IfName)
	sb.Close()
	if err != nil || len(addrs) != 1 || !strings.HasPrefix(addrs[0].IPNet.String(), "10.99.0.") || !strings.HasSuffix(addrs[0].IPNet.String(), "/16") {
		t.Fatalf("n0's addresses: %v, %v; want one from --node-net 10.99.0.0/16", addrs, err)
	}
	c.mustCLI("checkpoint", j.id)
	j.progress("after a checkpoint")
	// Each shim has an image directory of its own: the images go from the
	// source's shim to the destination's, verified there against the node
	// manifest the source reported.
	migrate := func(node, to, mode, wantMode string) {
		t.Helper()
		out := c.mustCLI("migrate", j.id, "--node", node, "--to", to, "--postcopy", mode, "--json")
		var m jsonMigrate
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &m); err != nil {
			t.Fatalf("migrate --json: %v\n%s", err, out)
		}
		if !m.Streamed || m.Mode != wantMode {
			t.Fatalf("migrate %s to %s: %+v, want %s with images streamed\n%s", node, to, m, wantMode, out)
		}
		if !strings.Contains(c.logs["shim-"+to].String(), "fetched migration images") {
			t.Fatalf("the shim of %s never said it fetched the images:\n%s", to, c.logs["shim-"+to])
		}
		j.progress(fmt.Sprintf("after migrating %s to %s (%s, streamed, downtime %v)", node, to, m.Mode, time.Duration(m.DowntimeNS).Round(time.Millisecond)))
	}
	migrate("n1", "h4", "never", "stop-copy")
	migrate("n0", "h5", "always", "post-copy")
	h := lastLines(c.mustCLI("suspend", j.id), 1)
	c.mustCLI("restart", h, "--host", "n0=h1", "--host", "n1=h2", "--host", "n2=h4")
	if ps := c.mustCLI("ps"); !strings.Contains(ps, "n0@h1,n1@h2,n2@h4") {
		t.Fatalf("after restart elsewhere:\n%s", ps)
	}
	j.progress("after a restart on h1,h2,h4")
	j.finishWith(want, "on a routed cluster")

	// The job ended: no migration left images behind on any host.
	c.assertNoImagesLeft()

	// Every host that ran a job-node sent and received job-node traffic
	// through its VXLAN port: the only way between them.
	for _, i := range []int{1, 2, 3, 4, 5} {
		hn, err := netquiesce.OpenNamedNet(c.sim.Host(i).NetNS)
		if err != nil {
			t.Fatal(err)
		}
		l, err := hn.Link(agent.VXLANDevice)
		hn.Close()
		if err != nil {
			t.Fatalf("h%d: %v", i, err)
		}
		st := l.Attrs().Statistics
		if st == nil || st.TxPackets == 0 || st.RxPackets == 0 {
			t.Fatalf("h%d: %s sent or received nothing: %+v", i, agent.VXLANDevice, st)
		}
		t.Logf("h%d: %s sent %d and received %d packets", i, agent.VXLANDevice, st.TxPackets, st.RxPackets)
	}
}

// A streamed migration whose images are changed on the way (the source's
// shim runs with fault.CorruptSentImages): the destination refuses them
// before anything restored runs, the migration is aborted and the job runs
// on where it was, with the undisturbed result.
func TestStreamedImagesCorrupted(t *testing.T) {
	c, j, want := abortedMigration(t, "sc", fault.CorruptSentImages, "pages-")
	j.progress("after the refused migration")
	// From a shim that sends what it has, the next one streams and works.
	out := c.mustCLI("migrate", j.id, "--node", "n1", "--to", "h4", "--postcopy", "never")
	if !strings.Contains(out, "images streamed") {
		t.Fatalf("second migration:\n%s", out)
	}
	j.progress("after migrating n1 to h4")
	j.finishWith(want, "after a migration refused for changed images")
	c.assertNoImagesLeft()
}

// assertNoImagesLeft fails the test if a host's image directory (routed
// clusters: torpor shim --image-dir) still holds a file.
func (c *cluster) assertNoImagesLeft() {
	c.t.Helper()
	for _, h := range c.sim.Hosts {
		var left []string
		filepath.WalkDir(filepath.Join(c.dir, "images", fmt.Sprintf("h%d", h.Index)), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				left = append(left, p)
			}
			return nil
		})
		if len(left) > 0 {
			c.t.Errorf("h%d's image directory still holds %v", h.Index, left)
		}
	}
}

// A streamed stop-and-copy migration whose dump fails (the source's CRIU
// killed mid-dump: fault.CRIUKillInDump) while the destination already
// fetches: the destination's restore ends with the source's stream, the
// migration is aborted, the job runs on where it was, and no host keeps
// migration images.
func TestStreamedDumpFails(t *testing.T) {
	c, j, want := abortedMigration(t, "sd", fault.CRIUKillInDump, "criu was killed")
	if !strings.Contains(c.logs["shim-h4"].String(), "fetching migration images") {
		t.Fatalf("the destination never began to fetch while the source dumped:\n%s", c.logs["shim-h4"])
	}
	j.progress("after the aborted migration")
	j.finishWith(want, "after a streamed migration whose dump failed")
	c.assertNoImagesLeft()
}

// abortedMigration starts the fault ring job (n0 on h1) on a routed cluster
// of 4 hosts whose h1 shim runs with point, and has a streamed stop-copy
// migration of n0 to h4 fail: torpor migrate must name why (reason) and
// say the job keeps running on its old hosts, and n0 must still be on h1.
func abortedMigration(t *testing.T, name string, point fault.Point, reason string) (*cluster, *mpiJob, string) {
	t.Helper()
	c := newRoutedCluster(t, 4)
	c.startShim(1, "--fault", string(point))
	want := faultReference(t)
	j := c.faultJob(name)
	out, code := c.cli("migrate", j.id, "--node", "n0", "--to", "h4", "--postcopy", "never")
	if code == 0 || !strings.Contains(out, reason) || !strings.Contains(out, "keeps running on its old hosts") {
		t.Fatalf("migrate with fault %s: exit %d, want it to fail naming %q\n%s", point, code, reason, out)
	}
	t.Logf("aborted: %s", lastLines(out, 1))
	if p := c.placement(j.id); p["n0"] != "h1" {
		t.Fatalf("n0 is on %s after the aborted migration", p["n0"])
	}
	return c, j, want
}
