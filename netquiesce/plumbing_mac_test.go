package netquiesce

import (
	"net"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// TestBridgeMACStays: a bridge made by AddBridge keeps its address when a
// port with a lower one joins and leaves; an unpinned bridge would take the
// port's.
func TestBridgeMACStays(t *testing.T) {
	testutil.RequireRoot(t, "creates a network namespace")
	name := "torpor-macpin-test"
	ns, err := NewNamedNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DeleteNamedNetns(name) })
	n, err := OpenNet(ns)
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.AddBridge("br0"); err != nil {
		t.Fatal(err)
	}
	mac := func() string {
		l, err := n.Link("br0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr.String()
	}
	before := mac()
	low, _ := net.ParseMAC("02:00:00:00:00:01")
	if err := AddVeth(VethEnd{Net: n, Name: "pa", MAC: low}, VethEnd{Net: n, Name: "pb"}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetMaster("pa", "br0"); err != nil {
		t.Fatal(err)
	}
	if got := mac(); got != before {
		t.Fatalf("bridge address changed from %s to %s when a port with 02:00:00:00:00:01 joined", before, got)
	}
}
