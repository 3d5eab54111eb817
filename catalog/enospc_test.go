package catalog

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// smallTmpfs mounts a tmpfs of size bytes in a temporary directory and unmounts it
// in Cleanup.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	testutil.RequireRoot(t, "mounts a small tmpfs to fill the disk")
	dir := filepath.Join(t.TempDir(), "full")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("torpor-test-tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			return
		}
	}
}

func TestDiskFull(t *testing.T) {
	root := smallTmpfs(t, "1m")
	s, err := Open(filepath.Join(root, "ckpt"), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	good := commitOne(t, s, "job")

	t.Run("commit", func(t *testing.T) {
		p, err := s.Begin("job")
		if err != nil {
			t.Fatal(err)
		}
		dumpNodes(t, p, smallImages())
		ballast := filepath.Join(root, "ballast")
		fill(t, ballast)
		t.Cleanup(func() { os.Remove(ballast) })

		_, err = p.Commit(testManifest())
		t.Logf("Commit on a full disk: %v", err)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Commit on a full disk = %v, want ENOSPC", err)
		}
		if !strings.Contains(err.Error(), JobManifestName) || !strings.Contains(err.Error(), "free space") {
			t.Fatalf("error %q does not name the manifest or say what to do", err)
		}
		if _, err := os.Stat(filepath.Join(p.Dir(), JobManifestName)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatal("manifest.json visible after a failed commit")
		}
		if ents, _ := os.ReadDir(p.Dir()); len(ents) != 1 {
			t.Fatalf("temporary files left after failed commit: %v", ents)
		}
		cps, err := s.List("job")
		if err != nil || len(cps) != 1 || cps[0].Handle != good.Handle {
			t.Fatalf("List after failed commit = %v, %v", handles(cps), err)
		}
		if err := p.Abort(); err != nil {
			t.Fatalf("Abort on a full disk: %v", err)
		}
		if _, err := os.Stat(p.Dir()); !errors.Is(err, fs.ErrNotExist) {
			t.Fatal("Abort left the partial checkpoint")
		}
	})

	t.Run("node manifest", func(t *testing.T) {
		p, err := s.Begin("job")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Abort() })
		dir, err := p.NodeDir("n0")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), make([]byte, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
		ballast := filepath.Join(root, "ballast")
		fill(t, ballast)
		t.Cleanup(func() { os.Remove(ballast) })
		_, err = WriteNodeManifest(context.Background(), dir)
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), NodeManifestName) {
			t.Fatalf("WriteNodeManifest on a full disk = %v, want ENOSPC naming %s", err, NodeManifestName)
		}
		if _, err := os.Stat(filepath.Join(dir, NodeManifestName)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatal("node manifest visible after a failed write")
		}
	})

	if err := s.Verify(context.Background(), good.Handle); err != nil {
		t.Fatalf("earlier checkpoint damaged: %v", err)
	}
}
