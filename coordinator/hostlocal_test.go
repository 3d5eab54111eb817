package coordinator

import (
	"reflect"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
)

func TestRingAfter(t *testing.T) {
	hosts := []string{"h1", "h2", "h3", "h4"}
	for host, want := range map[string][]string{
		"h1": {"h2", "h3", "h4"},
		"h3": {"h4", "h1", "h2"},
		"h4": {"h1", "h2", "h3"},
		"h0": {"h1", "h2", "h3", "h4"}, // a host not (or no longer) registered
	} {
		if got := ringAfter(hosts, host); !reflect.DeepEqual(got, want) {
			t.Errorf("ringAfter(%s) = %v, want %v", host, got, want)
		}
	}
	if got := ringAfter(hosts, "h2"); &got[0] == &hosts[0] || !reflect.DeepEqual(hosts, []string{"h1", "h2", "h3", "h4"}) {
		t.Fatal("ringAfter changed or shares its input")
	}
}

// TestCopiesCounted: a copy counts only with the digest the job manifest
// records; the job-node with the fewest good copies decides.
func TestCopiesCounted(t *testing.T) {
	man := Manifest{Nodes: map[string]agentapi.DumpResult{"n0": {NodeManifestSHA256: "a"}, "n1": {NodeManifestSHA256: "b"}}}
	cp := copies{
		"n0": {"h1": "a", "h2": "a", "h3": "x"},
		"n1": {"h2": "b", "h3": "b", "h4": "stale"},
	}
	if got := cp.holders("n0", "a"); !reflect.DeepEqual(got, []string{"h1", "h2"}) {
		t.Fatalf("holders of n0 = %v", got)
	}
	if got := cp.fewest(man); got != 2 {
		t.Fatalf("fewest = %d, want 2", got)
	}
	delete(cp["n1"], "h3")
	if got := cp.fewest(man); got != 1 {
		t.Fatalf("fewest after a host lost its copy = %d, want 1", got)
	}
	if got := (copies{}).fewest(man); got != 0 {
		t.Fatalf("fewest with no copy = %d, want 0", got)
	}
}
