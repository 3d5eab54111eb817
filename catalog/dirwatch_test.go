package catalog

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// wake waits for one value on w.C; FollowSafety bounds nothing here: a
// change must wake the reader by itself.
func wake(t *testing.T, w *DirWatch, what string) {
	t.Helper()
	select {
	case <-w.C:
	case <-time.After(10 * time.Second):
		t.Fatalf("no wake-up after %s", what)
	}
}

func TestDirWatchWakesOnCreateAndAppend(t *testing.T) {
	dir := t.TempDir()
	w, err := WatchDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case <-w.C:
		t.Fatal("woken before anything changed")
	default:
	}
	f, err := os.Create(filepath.Join(dir, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wake(t, w, "a file was created")
	if _, err := f.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	wake(t, w, "a write")
	// Many changes while nobody reads make one pending value, not a
	// blocked watcher.
	for i := 0; i < 100; i++ {
		if _, err := f.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	wake(t, w, "100 writes")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wake(t, w, "close after writing")
}

func TestDirWatchCloseEndsIt(t *testing.T) {
	dir := t.TempDir()
	w, err := WatchDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { w.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// The inotify instance goes in the background; once its reader has
	// ended, whatever it read after Close must not have reached C.
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch's reader did not end after Close")
	}
	select {
	case <-w.C:
		t.Fatal("woken after Close")
	default:
	}
}

func TestWatchDirMissing(t *testing.T) {
	if _, err := WatchDir(filepath.Join(t.TempDir(), "gone")); err == nil {
		t.Fatal("watching a directory that does not exist succeeded")
	}
}
