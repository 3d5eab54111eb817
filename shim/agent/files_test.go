package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// The shared files come back as they were at the dump, owned by the job's
// owner, whatever the job wrote to them afterwards; files created after the
// dump are left alone. The shim, root, follows none of the symbolic links
// the owner may plant in these directories, which are theirs.
func TestSaveRestoreFiles(t *testing.T) {
	dir := t.TempDir()
	shm := filepath.Join(dir, "n0.shm")
	pmixDir := filepath.Join(dir, "n0.pmix")
	images := filepath.Join(dir, "images")
	sentinel := filepath.Join(dir, "root-only")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		t.Helper()
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write(sentinel, "root's secret")
	write(filepath.Join(shm, "vader_segment.0"), "at dump")
	write(filepath.Join(pmixDir, "ds", "dstore"), "store at dump")
	link(sentinel, filepath.Join(shm, "planted")) // not saved: not a regular file
	dirs := []string{shm, pmixDir, filepath.Join(dir, "absent")}
	if err := saveFiles(images, dirs); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(images, filesDirName, "n0.shm", "planted")); err == nil {
		t.Fatal("saveFiles followed a symbolic link")
	}
	write(filepath.Join(shm, "new"), "created after")
	// The owner replaces a saved file and the restore's temporary name
	// with links to a file of root's.
	link(sentinel, filepath.Join(shm, "vader_segment.0"))
	link(sentinel, filepath.Join(shm, "vader_segment.0.torpor-restore"))
	if err := os.RemoveAll(pmixDir); err != nil {
		t.Fatal(err)
	}
	u := &sandbox.User{UID: 4242, GID: 4243}
	if err := restoreFiles(images, dirs, u); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		filepath.Join(shm, "vader_segment.0"):  "at dump",
		filepath.Join(pmixDir, "ds", "dstore"): "store at dump",
		filepath.Join(shm, "new"):              "created after",
		sentinel:                               "root's secret",
	} {
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", p, got, err, want)
		}
	}
	for _, p := range []string{filepath.Join(shm, "vader_segment.0"), pmixDir, filepath.Join(pmixDir, "ds"), filepath.Join(pmixDir, "ds", "dstore")} {
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 4242 || sys.Gid != 4243 || st.Mode().Type() == fs.ModeSymlink {
			t.Errorf("%s: %v owned by %d:%d, want a file or directory of 4242:4243", p, st.Mode(), sys.Uid, sys.Gid)
		}
	}
	// A directory on the way replaced with a link to one of root's: the
	// restore stops there.
	if err := os.RemoveAll(filepath.Join(pmixDir, "ds")); err != nil {
		t.Fatal(err)
	}
	rootDir := filepath.Join(dir, "root-dir")
	if err := os.Mkdir(rootDir, 0o700); err != nil {
		t.Fatal(err)
	}
	link(rootDir, filepath.Join(pmixDir, "ds"))
	err := restoreFiles(images, dirs, u)
	if err == nil || !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("restore through a planted directory link: %v, want ELOOP", err)
	}
	t.Logf("refused: %v", err)
	if ents, _ := os.ReadDir(rootDir); len(ents) != 0 {
		t.Fatalf("the restore wrote into root's directory: %v", ents)
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
