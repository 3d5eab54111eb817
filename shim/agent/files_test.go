package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// The shared files come back as they were at the dump, whatever the job
// wrote to them afterwards; files created after the dump are left alone.
func TestSaveRestoreFiles(t *testing.T) {
	dir := t.TempDir()
	shm := filepath.Join(dir, "n0.shm")
	pmixDir := filepath.Join(dir, "n0.pmix")
	images := filepath.Join(dir, "images")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(shm, "vader_segment.0"), "at dump")
	write(filepath.Join(pmixDir, "ds", "dstore"), "store at dump")
	dirs := []string{shm, pmixDir, filepath.Join(dir, "absent")}
	if err := saveFiles(images, dirs); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(shm, "vader_segment.0"), "written after the checkpoint")
	write(filepath.Join(shm, "new"), "created after")
	if err := os.RemoveAll(pmixDir); err != nil {
		t.Fatal(err)
	}
	if err := restoreFiles(images, dirs); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		filepath.Join(shm, "vader_segment.0"):  "at dump",
		filepath.Join(pmixDir, "ds", "dstore"): "store at dump",
		filepath.Join(shm, "new"):              "created after",
	} {
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", p, got, err, want)
		}
	}
}

func TestExitCode(t *testing.T) {
	run := func(script string) *os.ProcessState {
		t.Helper()
		p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", script}, &os.ProcAttr{})
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	started := exec.Command("/bin/sh", "-c", "exit 7").Run()
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"none", nil, 0},
		{"started tree", fmt.Errorf("wrapped: %w", started), 7},
		{"restored tree", &sandbox.InitExit{State: run("exit 139")}, 139},
		{"killed by a signal", &sandbox.InitExit{State: run("kill -9 $$")}, 1},
		{"other", errors.New("boom"), 1},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("%s: exitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}
