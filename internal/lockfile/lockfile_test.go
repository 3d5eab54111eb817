package lockfile

import (
	"errors"
	"path/filepath"
	"testing"
)

// A second TryLock of a held lock fails with ErrHeld; once the holder
// closes its file, it succeeds.
func TestTryLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	f, err := TryLock(p)
	if err != nil {
		t.Fatal(err)
	}
	if g, err := TryLock(p); !errors.Is(err, ErrHeld) {
		if g != nil {
			g.Close()
		}
		t.Fatalf("second lock: %v, want ErrHeld", err)
	}
	f.Close()
	g, err := TryLock(p)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	g.Close()
}
