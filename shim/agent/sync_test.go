package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// TestSyncDump: Sync of a checkpoint's real dump syncs every file the dump
// wrote, skips what is no regular file (a FIFO the job's owner could have
// put among captured files would block a plain open), and is refused for a
// dump this shim has no record of.
func TestSyncDump(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a := h.agent(nil)
	ref := agentapi.NodeRef{Job: "job", Node: "n0"}
	spec := tickerSpec("n0", 1, filepath.Join(t.TempDir(), "stop"))
	mustOK(t, "start", a.Start(ctx, "job", spec))
	waitTicks(t, a, "job", "n0", 2)
	mustOK(t, "freeze", a.Freeze(ctx, ref))
	mustOK(t, "lock", a.Lock(ctx, ref))
	img := filepath.Join(t.TempDir(), ref.Node)
	res, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, LeaveRunning: true, Checkpoint: "job/000001"})
	mustOK(t, "dump", err)
	mustOK(t, "destroy", a.Destroy(ctx, ref)) // Sync needs no job-node

	if err := unix.Mkfifo(filepath.Join(img, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", filepath.Join(img, "zero")); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx, agentapi.NodeRef{Job: "job", Node: "n1"}, "job/000001"); !errors.Is(err, agentapi.ErrNotFound) {
		t.Errorf("Sync of a job-node this shim did not dump: %v, want not found", err)
	}
	if err := a.Sync(ctx, ref, "job/000002"); !errors.Is(err, agentapi.ErrNotFound) {
		t.Errorf("Sync of a checkpoint this shim did not dump: %v, want not found", err)
	}
	if err := a.Sync(ctx, ref, "job/000001"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	regular := 0
	_ = filepath.WalkDir(img, func(_ string, d fs.DirEntry, _ error) error {
		if d != nil && d.Type().IsRegular() {
			regular++
		}
		return nil
	})
	n, err := syncTree(ctx, img, "")
	if err != nil || n != regular || n < res.Files {
		t.Errorf("syncTree of the images: %d files, %v; %d regular files there, the dump reported %d", n, err, regular, res.Files)
	}
	// Its record goes with the sync: the coordinator asks once.
	if err := a.Sync(ctx, ref, "job/000001"); !errors.Is(err, agentapi.ErrNotFound) {
		t.Errorf("a second Sync: %v, want not found", err)
	}
}

// TestSyncStore: in the shim's store Sync finds the images without a
// record of the dump (a shim restarted since), and never follows a link
// there.
func TestSyncStore(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	_, ctls := shimTLS(t)
	a := imageAgent(t, "h1", ctls)
	ctx := context.Background()
	storeImages(t, a, "j/000002", "n0", map[string][]byte{"core-1.img": []byte("core"), "pages-1.img": make([]byte, 8192)})
	if err := a.Sync(ctx, agentapi.NodeRef{Job: "j", Node: "n0"}, "j/000002"); err != nil {
		t.Fatalf("Sync of stored images: %v", err)
	}
	for _, bad := range []struct{ job, node, ckpt string }{
		{"j", "n0", "j/000003"}, {"j", "../n0", "j/000002"}, {"j", "n0", "../j/000002"},
	} {
		if err := a.Sync(ctx, agentapi.NodeRef{Job: bad.job, Node: bad.node}, bad.ckpt); err == nil {
			t.Errorf("Sync(%s/%s, %q) = nil, want an error", bad.job, bad.node, bad.ckpt)
		}
	}
	// A link in place of a stored node's directory: not followed.
	dir, _ := a.storeDir("j/000004", "n0")
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), dir); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx, agentapi.NodeRef{Job: "j", Node: "n0"}, "j/000004"); !errors.Is(err, agentapi.ErrNotFound) {
		t.Errorf("Sync through a link: %v, want not found", err)
	}
}

// TestSyncTree: every regular file counts, nothing else is opened; a
// FIFO named as a file is refused, not waited on.
func TestSyncTree(t *testing.T) {
	root := filepath.Join(t.TempDir(), "img")
	for _, d := range []string{"a/b", "c"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"x", "a/y", "a/b/z", "c/w"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(root, "a/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", filepath.Join(root, "c/zero")); err != nil {
		t.Fatal(err)
	}
	n, err := syncTree(context.Background(), root, "")
	if err != nil || n != 4 {
		t.Fatalf("syncTree = %d, %v; want 4 files", n, err)
	}
	// Up to an ancestor, and up to "/" for one that is none: both end.
	for _, top := range []string{filepath.Dir(filepath.Dir(root)), "/nonexistent"} {
		if n, err := syncTree(context.Background(), root, top); err != nil || n != 4 {
			t.Fatalf("syncTree up to %s = %d, %v; want 4 files", top, n, err)
		}
	}
	if err := fsyncPath(filepath.Join(root, "a/fifo"), false); err == nil {
		t.Error("fsyncPath of a FIFO as a file: nil, want an error")
	}
	if err := fsyncPath(filepath.Join(root, "c/zero"), false); err == nil {
		t.Error("fsyncPath through a symbolic link: nil, want an error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := syncTree(ctx, root, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("syncTree with its context done: %v, want canceled", err)
	}
}
