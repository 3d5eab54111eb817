package main

import (
	"maps"
	"slices"
	"testing"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

func TestCPUsPerNode(t *testing.T) {
	for _, c := range []struct {
		in    string
		nodes int
		want  []int
	}{
		{"2(x3),1", 4, []int{2, 2, 2, 1}},
		{"4", 1, []int{4}},
		{"", 2, []int{1, 1}},
	} {
		got, err := cpusPerNode(c.in, c.nodes)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%q: %v %v, want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"2(x3)", "x", "0", "2(x0)", "2(x", "-1"} {
		if _, err := cpusPerNode(bad, 2); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestMapNodes(t *testing.T) {
	spec := &apiv1.JobSpec{Id: "j", Nodes: []*apiv1.NodeSpec{
		{Name: "n0", Host: "h1"}, {Name: "n1", Host: "h2"}, {Name: "n2", Host: "h2"},
	}}
	got, err := mapNodes(spec, []string{"h3", "h4"})
	want := map[string]string{"n0": "h3", "n1": "h4", "n2": "h4"}
	if err != nil || !maps.Equal(got, want) {
		t.Fatalf("new nodes: %v %v, want %v", got, err, want)
	}
	// h2 is kept: its job-nodes stay; h1's go to the free node.
	got, err = mapNodes(spec, []string{"h5", "h2"})
	want = map[string]string{"n0": "h5", "n1": "h2", "n2": "h2"}
	if err != nil || !maps.Equal(got, want) {
		t.Fatalf("one node kept: %v %v, want %v", got, err, want)
	}
	if _, err := mapNodes(spec, []string{"h9"}); err == nil {
		t.Fatal("two hosts' job-nodes mapped onto one node")
	}
}
