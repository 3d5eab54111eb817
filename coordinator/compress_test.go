package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
)

// TestCheckpointCompress: a job's --compress reaches every shim's dump, a
// checkpoint's own --compress overrides it for that checkpoint, and an
// unknown codec is refused, in a job spec and in a checkpoint request,
// before anything is frozen.
func TestCheckpointCompress(t *testing.T) {
	f := newFixture(t, "a", "b", "c")
	ctx := context.Background()
	spec := f.spec
	spec.ID, spec.Compress = "job2", "zstd"
	spec.Nodes = slices.Clone(spec.Nodes)
	for i := range spec.Nodes {
		spec.Nodes[i].IP = fmt.Sprintf("198.19.1.%d/15", 10+i)
	}
	if err := f.c.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ opt, want string }{{"", "zstd"}, {"lz4", "lz4"}, {"none", ""}, {"", "zstd"}} {
		for _, a := range f.agents {
			a.compress = nil
		}
		if _, err := f.c.Checkpoint(ctx, "job2", CheckpointOptions{Compress: tc.opt}); err != nil {
			t.Fatal(err)
		}
		for h, a := range f.agents {
			if len(a.compress) != 1 || a.compress[0] != tc.want {
				t.Fatalf("checkpoint --compress %q: shim %s dumped with %q, want %q", tc.opt, h, a.compress, tc.want)
			}
		}
	}
	if _, err := f.c.Checkpoint(ctx, "job2", CheckpointOptions{Compress: "gzip"}); !errors.Is(err, agentapi.ErrInvalid) {
		t.Fatalf("checkpoint --compress gzip: %v, want ErrInvalid", err)
	}
	if n := f.agents["a"].calls[PhaseFreeze]; n != 4 {
		t.Fatalf("%d freezes, want 4: the refused checkpoint froze", n)
	}
	bad := spec
	bad.ID, bad.Compress = "job3", "gzip"
	if err := f.c.Start(ctx, bad); !errors.Is(err, agentapi.ErrInvalid) {
		t.Fatalf("start with --compress gzip: %v, want ErrInvalid", err)
	}
}
