package agent

import (
	"os"
	"path/filepath"
	"testing"
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
