package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/shim/simhost"
	"golang.org/x/sys/unix"
)

// inNS runs a command in the mount namespace of h (h<i>, or coord) of an
// isolated cluster and returns its output.
func (c *cluster) inNS(h string, name string, args ...string) (string, error) {
	out, err := simhost.Command(c.mountNS[h], name, args...).CombinedOutput()
	return string(out), err
}

// The main demo on hosts that share no directory and no L2 segment (torpor
// sim up --isolated): every shim in a mount namespace of its own with its
// own run and image directories, the coordinator in another with its state
// and checkpoint directories, job-node traffic over VXLAN, checkpoints kept
// on the hosts with a replica each, the job's output reaching `torpor run`
// through the coordinator. An Open MPI job is checkpointed while it runs,
// killed and restarted (from the hosts' stores), suspended and restarted
// on other hosts (fetching its images from the hosts that hold them), has a
// job-node migrated (images streamed), and ends with the undisturbed
// checksum.
func TestIsolatedCluster(t *testing.T) {
	c := newIsolatedCluster(t, 5)
	want := faultReference(t)
	c.criuLogsOnFailure("iso", "n0")
	j := c.faultJob("iso") // n0@h1, n1@h2, n2@h3; --restart-on-failure 1
	j.progress("started on h1,h2,h3, its output through the coordinator")
	// The daemons talk over the routed network only: every shim registered
	// with its host's address there, from its host's network namespace.
	for i := 1; i <= 5; i++ {
		want := fmt.Sprintf(`msg="shim registered" host=h%d address=%s:`, i, c.sim.Host(i).Underlay)
		if !strings.Contains(c.logs["coordinator"].String(), want) {
			t.Fatalf("h%d's shim did not register from the routed network (%s):\n%s", i, want, c.logs["coordinator"])
		}
	}
	sameNetNS := func(pid int, nsFile string) bool {
		var a, b unix.Stat_t
		return unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &a) == nil && unix.Stat(nsFile, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev
	}
	if !sameNetNS(c.coord.Process.Pid, c.sim.Control.NetNSPath()) {
		t.Fatal("the coordinator does not run in the control host's network namespace")
	}
	for i, sh := range c.shims {
		if !sameNetNS(sh.Process.Pid, c.sim.Host(i+1).NetNSPath()) {
			t.Fatalf("h%d's shim does not run in its host's network namespace", i+1)
		}
	}

	h := lastLines(c.mustCLI("checkpoint", j.id), 1)
	if !c.waitLog("coordinator", "checkpoint replicated", 2*time.Minute) {
		t.Fatalf("checkpoint %s was never replicated", h)
	}
	seq := strings.TrimPrefix(h, j.id+"/")
	// Nothing is shared: each host sees its own job-node's files at the
	// common paths, and no other's; the machine sees none; the checkpoint
	// directory, the coordinator's, holds the job manifest only, and no host
	// sees it.
	for i, node := range []string{"n0", "n1", "n2"} {
		host := []string{"h1", "h2", "h3"}[i]
		ls, err := c.inNS(host, "ls", filepath.Join(c.runDir, "jobs", j.id))
		if err != nil || !strings.Contains(ls, node+".out") {
			t.Fatalf("%s's run directory as %s sees it: %v\n%s", node, host, err, ls)
		}
		for _, other := range []string{"n0", "n1", "n2"} {
			if other != node && strings.Contains(ls, other+".out") {
				t.Fatalf("%s sees %s's output:\n%s", host, other, ls)
			}
		}
		if mnt, err := c.inNS(host, "findmnt", "-n", "-o", "SOURCE", c.runDir); err != nil || !strings.Contains(mnt, "/hosts/"+host+"/run") {
			t.Fatalf("%s's run directory is not its own: %v %s", host, err, mnt)
		}
		if ls, _ := c.inNS(host, "ls", "-A", c.ckpt); strings.TrimSpace(ls) != "" {
			t.Fatalf("%s sees the coordinator's checkpoint directory: %s", host, ls)
		}
		if ls, err := c.inNS(host, "ls", filepath.Join(c.dir, "images", "checkpoints", j.id, seq)); err != nil || !strings.Contains(ls, node) {
			t.Fatalf("%s holds no images of %s: %v %s", host, node, err, ls)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(c.runDir, "jobs")); err == nil && len(ents) > 0 {
		t.Fatalf("the machine sees the hosts' run directories: %v", ents)
	}
	if ls, err := c.inNS("coord", "ls", filepath.Join(c.ckpt, j.id, seq)); err != nil || !strings.Contains(ls, "manifest.json") {
		t.Fatalf("the coordinator's checkpoint directory: %v %s", err, ls)
	}
	if ls, err := c.inNS("coord", "ls", "-A", filepath.Join(c.ckpt, j.id, seq, "nodes")); err != nil || strings.TrimSpace(ls) != "" {
		t.Fatalf("images in the coordinator's checkpoint directory: %v %s", err, ls)
	}
	t.Logf("checkpoint %s: each job-node's images on its host and a replica; no directory shared", h)

	// Every process of the job killed: `torpor run` restarts it from the
	// hosts' stores.
	for i, node := range []string{"n0", "n1", "n2"} {
		cg := c.nodeCgroup([]string{"h1", "h2", "h3"}[i], j.id, node)
		if err := os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	j.waitOutput(regexp.MustCompile(`restart 1 of 1 from `+regexp.QuoteMeta(h)), 2*time.Minute)
	c.waitState(j.id, "running", 2*time.Minute)
	j.progress("after every process was killed and the job restarted from " + h)

	// Suspended, and restarted on other hosts: each fetches its images from
	// a host that holds them.
	s := lastLines(c.mustCLI("suspend", j.id), 1)
	c.mustCLI("restart", s, "--host", "n0=h4", "--host", "n1=h5", "--host", "n2=h1")
	if ps := c.mustCLI("ps"); !strings.Contains(ps, "n0@h4,n1@h5,n2@h1") {
		t.Fatalf("after restart elsewhere:\n%s", ps)
	}
	for _, host := range []string{"h4", "h5"} {
		if !strings.Contains(c.logs["shim-"+host].String(), "fetched checkpoint images") {
			t.Fatalf("%s restored without fetching the images", host)
		}
	}
	j.progress("after a restart on h4,h5,h1")
	c.mustCLI("migrate", j.id, "--node", "n1", "--to", "h2")
	j.progress("after migrating n1 to h2 (images streamed)")
	j.finishWith(want, "on an isolated cluster, output through the coordinator")
	stop(j.run, syscall.SIGTERM)
}
