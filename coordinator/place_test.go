package coordinator

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
)

func TestPlaceRestart(t *testing.T) {
	spec := JobSpec{ID: "ring", Nodes: []agentapi.NodeSpec{
		{Name: "n0", Host: "h1", IP: "198.19.0.10/15"},
		{Name: "n1", Host: "h2", IP: "198.19.0.11/15"},
		{Name: "n2", Host: "h2", IP: "198.19.0.12/15"},
	}}
	shims := map[string]bool{"h1": true, "h2": true, "h3": true}
	known := func(h string) error {
		if !shims[h] {
			return fmt.Errorf("%w: no shim registered for host %q", agentapi.ErrNotFound, h)
		}
		return nil
	}
	hostsOf := func(nodes []agentapi.NodeSpec) []string {
		var out []string
		for _, n := range nodes {
			out = append(out, n.Host)
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		hosts map[string]string
		want  []string // hosts of n0, n1, n2
		err   string   // part of the error; "" for none
	}{
		{"where checkpointed", nil, []string{"h1", "h2", "h2"}, ""},
		{"one moves", map[string]string{"n1": "h3"}, []string{"h1", "h3", "h2"}, ""},
		{"all move, two share a host", map[string]string{"n0": "h3", "n1": "h3", "n2": "h1"}, []string{"h3", "h3", "h1"}, ""},
		{"to where it was", map[string]string{"n0": "h1"}, []string{"h1", "h2", "h2"}, ""},
		{"no such job-node", map[string]string{"n9": "h3"}, nil, `job ring has no job-node "n9"`},
		{"first unknown job-node by name", map[string]string{"x": "h1", "a": "h1", "n0": "h3"}, nil, `no job-node "a"`},
		{"no shim for the new host", map[string]string{"n2": "h7"}, nil, `job-node n2: not found: no shim registered for host "h7"`},
	} {
		before := append([]agentapi.NodeSpec(nil), spec.Nodes...)
		got, err := placeRestart(spec, tt.hosts, known)
		if !reflect.DeepEqual(spec.Nodes, before) {
			t.Fatalf("%s: placeRestart changed the spec: %v", tt.name, spec.Nodes)
		}
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, agentapi.ErrNotFound) {
				t.Errorf("%s: error %v, want ErrNotFound saying %q", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if h := hostsOf(got); !reflect.DeepEqual(h, tt.want) {
			t.Errorf("%s: hosts %v, want %v", tt.name, h, tt.want)
		}
		for i := range got { // only the host changes
			got[i].Host = spec.Nodes[i].Host
		}
		if !reflect.DeepEqual(got, spec.Nodes) {
			t.Errorf("%s: more than the hosts changed: %v", tt.name, got)
		}
	}
	// A host the checkpoint was taken on may have gone too.
	delete(shims, "h2")
	if _, err := placeRestart(spec, nil, known); err == nil || !strings.Contains(err.Error(), "job-node n1:") {
		t.Errorf("old host without a shim: %v", err)
	}
}
