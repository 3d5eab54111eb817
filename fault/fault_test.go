package fault

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		d       Daemon
		names   []string
		want    []Point
		wantErr string
	}{
		{Shim, []string{"shim-exit-in-dump"}, []Point{ShimExitInDump}, ""},
		{Shim, []string{"criu-kill-in-dump", ""}, []Point{CRIUKillInDump}, ""},
		{Coordinator, []string{"crash-before-commit"}, []Point{CoordinatorCrashBeforeCommit}, ""},
		{Coordinator, []string{"shim-exit-in-dump"}, nil, `unknown fault point "shim-exit-in-dump" for the coordinator; known: crash-after-restore, crash-before-commit, crash-past-no-return`},
		{Shim, []string{"nope"}, nil, "known: corrupt-sent-images, criu-kill-in-dump, hold-in-restore, shim-exit-in-dump"},
	}
	for _, tt := range tests {
		s, err := Parse(tt.d, tt.names)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%s, %q) = %v, want error containing %q", tt.d, tt.names, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Parse(%s, %q): %v", tt.d, tt.names, err)
		}
		if len(s) != len(tt.want) {
			t.Errorf("Parse(%s, %q) = %v, want %v", tt.d, tt.names, s, tt.want)
		}
		for _, p := range tt.want {
			if !s.Has(p) {
				t.Errorf("Parse(%s, %q) lacks %s", tt.d, tt.names, p)
			}
		}
	}
	var none Set
	if none.Has(ShimExitInDump) {
		t.Error("a nil Set has a point")
	}
}

func TestCatalogDocumentsEveryPoint(t *testing.T) {
	seen := map[Point]bool{}
	for _, i := range Catalog {
		if i.Where == "" || i.Expect == "" || (i.Daemon != Shim && i.Daemon != Coordinator) {
			t.Errorf("%s is not documented: %+v", i.Point, i)
		}
		if seen[i.Point] {
			t.Errorf("%s listed twice", i.Point)
		}
		seen[i.Point] = true
	}
}
