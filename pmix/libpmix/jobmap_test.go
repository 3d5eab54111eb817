package libpmix

import (
	"errors"
	"testing"
)

func twoNodes() JobMap {
	return JobMap{
		Nspace: "job1",
		Nodes: []NodeMap{
			{Hostname: "a", Ranks: []Rank{0, 1}},
			{Hostname: "b", Ranks: []Rank{2, 3}},
		},
		Local:  1,
		TmpDir: "/t/job",
		NsDir:  "/t/job/ns",
	}
}

func TestJobMapValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*JobMap)
		ok     bool
	}{
		{"valid", func(*JobMap) {}, true},
		{"no namespace", func(m *JobMap) { m.Nspace = "" }, false},
		{"no nodes", func(m *JobMap) { m.Nodes = nil }, false},
		{"local out of range", func(m *JobMap) { m.Local = 2 }, false},
		{"same hostname twice", func(m *JobMap) { m.Nodes[1].Hostname = "a" }, false},
		{"hostname with comma", func(m *JobMap) { m.Nodes[1].Hostname = "b,c" }, false},
		{"rank twice", func(m *JobMap) { m.Nodes[1].Ranks = []Rank{1, 3} }, false},
		{"rank gap", func(m *JobMap) { m.Nodes[1].Ranks = []Rank{2, 4} }, false},
		{"unsorted", func(m *JobMap) { m.Nodes[1].Ranks = []Rank{3, 2} }, false},
		{"empty node", func(m *JobMap) { m.Nodes[1].Ranks = nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := twoNodes()
			tc.mutate(&m)
			err := m.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrBadJobMap) {
				t.Fatalf("Validate = %v, want ErrBadJobMap", err)
			}
		})
	}
}

func TestJobMapInfos(t *testing.T) {
	infos, err := twoNodes().Infos()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		KeyJobID:      "job1",
		KeyJobSize:    uint32(4),
		KeyMaxProcs:   uint32(4),
		KeyNumNodes:   uint32(2),
		KeyNodeMap:    NodeRegex("a,b"),
		KeyProcMap:    ProcRegex("0,1;2,3"),
		KeyLocalPeers: "2,3",
		KeyLocalSize:  uint32(2),
		KeyLocalLdr:   Rank(2),
		KeyHostname:   "b",
		KeyNsDir:      "/t/job/ns",
	}
	for k, v := range want {
		got, ok := Lookup(infos, k)
		if !ok || got != v {
			t.Errorf("%s = %#v (present %v), want %#v", k, got, ok, v)
		}
	}
	var procs, nodes int
	for _, in := range infos {
		switch in.Key {
		case KeyNodeInfoArray:
			nodes++
		case KeyProcData:
			procs++
			pd := in.Value.([]Info)
			if pd[0].Key != KeyRank {
				t.Errorf("proc data starts with %s, want %s", pd[0].Key, KeyRank)
			}
			r := pd[0].Value.(Rank)
			lr, _ := Lookup(pd, KeyLocalRank)
			if lr != uint16(r%2) {
				t.Errorf("rank %d local rank %v, want %d", r, lr, r%2)
			}
			nid, _ := Lookup(pd, KeyNodeID)
			if nid != uint32(r/2) {
				t.Errorf("rank %d node id %v, want %d", r, nid, r/2)
			}
			_, hasDir := Lookup(pd, KeyProcDir)
			if hasDir != (r >= 2) {
				t.Errorf("rank %d: PMIX_PROCDIR present=%v, want only for local ranks", r, hasDir)
			}
		}
	}
	if procs != 4 || nodes != 2 {
		t.Errorf("%d proc data and %d node arrays, want 4 and 2", procs, nodes)
	}
}

func TestSignature(t *testing.T) {
	for _, tc := range []struct {
		procs []Proc
		want  string
	}{
		{[]Proc{{"j", RankWildcard}}, "j:*"},
		{[]Proc{{"j", 3}, {"j", 1}, {"j", 3}}, "j:1,j:3"},
		{nil, ""},
	} {
		if got := Signature(tc.procs); got != tc.want {
			t.Errorf("Signature(%v) = %q, want %q", tc.procs, got, tc.want)
		}
	}
}
