package e2e

import (
	"strings"
	"testing"

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
	c.mustCLI("migrate", j.id, "--node", "n1", "--to", "h4", "--postcopy", "never")
	j.progress("after migrating n1 to h4 (stop-copy)")
	c.mustCLI("migrate", j.id, "--node", "n0", "--to", "h5", "--postcopy", "always")
	j.progress("after migrating n0 to h5 (post-copy)")
	h := lastLines(c.mustCLI("suspend", j.id), 1)
	c.mustCLI("restart", h, "--host", "n0=h1", "--host", "n1=h2", "--host", "n2=h4")
	if ps := c.mustCLI("ps"); !strings.Contains(ps, "n0@h1,n1@h2,n2@h4") {
		t.Fatalf("after restart elsewhere:\n%s", ps)
	}
	j.progress("after a restart on h1,h2,h4")
	j.finishWith(want, "on a routed cluster")

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
