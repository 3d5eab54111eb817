package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
)

// TestReadOutput: a job-node's output file from an offset, capped, with its
// size; nothing (size 0) before it exists; names that leave the run
// directory and a symbolic link in place of the file are refused.
func TestReadOutput(t *testing.T) {
	a, err := New(Config{Host: "h1", Bridge: "br0", RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ref := agentapi.NodeRef{Job: "j", Node: "n0"}
	if data, size, err := a.ReadOutput(ctx, ref, 0, 0); err != nil || size != 0 || len(data) != 0 {
		t.Fatalf("before the file exists: %q %d %v", data, size, err)
	}
	p := a.OutputPath("j", "n0")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("hello world\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if data, size, err := a.ReadOutput(ctx, ref, 6, 3); err != nil || string(data) != "wor" || size != 12 {
		t.Fatalf("from 6, 3 bytes: %q %d %v", data, size, err)
	}
	if data, size, err := a.ReadOutput(ctx, ref, 20, 0); err != nil || len(data) != 0 || size != 12 {
		t.Fatalf("past the end: %q %d %v", data, size, err)
	}
	for _, bad := range []agentapi.NodeRef{{Job: "..", Node: "n0"}, {Job: "j", Node: "../x"}} {
		if _, _, err := a.ReadOutput(ctx, bad, 0, 0); !errors.Is(err, agentapi.ErrInvalid) {
			t.Fatalf("%+v: %v, want invalid", bad, err)
		}
	}
	if _, _, err := a.ReadOutput(ctx, ref, -1, 0); !errors.Is(err, agentapi.ErrInvalid) {
		t.Fatalf("negative offset: %v", err)
	}
	os.Remove(p)
	if err := os.Symlink("/etc/hostname", p); err != nil {
		t.Fatal(err)
	}
	if data, _, err := a.ReadOutput(ctx, ref, 0, 0); err == nil {
		t.Fatalf("read through a symbolic link: %q", data)
	}
}
