package criu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

func realCRIU(t *testing.T) Binary {
	t.Helper()
	testutil.RequireRoot(t, "runs CRIU in a mount namespace of its own and mounts")
	bin, err := Locator{}.Find()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestKerndatMount: the cache CRIU makes in a namespace of its own is bound
// read-only, on a tmpfs, over an absent or empty file, and nothing else is
// left; a file that is not an empty regular one is refused.
func TestKerndatMount(t *testing.T) {
	bin := realCRIU(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	data, err := probeKerndat(ctx, bin.Path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 {
		t.Fatal("empty cache")
	}
	dir := t.TempDir()
	for _, placeholder := range []bool{false, true} {
		path := filepath.Join(dir, "criu.kdat")
		if placeholder {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := mountKerndat(path, data); err != nil {
			t.Fatalf("placeholder %v: %v", placeholder, err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != string(data) {
			t.Errorf("placeholder %v: read back %d bytes (%v), want the %d CRIU wrote", placeholder, len(got), err, len(data))
		}
		if tmpfs, err := isTmpfs(path); err != nil || !tmpfs {
			t.Errorf("placeholder %v: the cache is not on a tmpfs (%v)", placeholder, err)
		}
		if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			f.Close()
			t.Errorf("placeholder %v: the cache can be opened for writing", placeholder)
		} else if !errors.Is(err, syscall.EROFS) {
			t.Errorf("placeholder %v: open for writing: %v, want EROFS", placeholder, err)
		}
		if present, err := kerndatPresent(path); err != nil || !present {
			t.Errorf("placeholder %v: kerndatPresent = %v, %v after the mount", placeholder, present, err)
		}
		if err := unix.Unmount(path, 0); err != nil {
			t.Fatal(err)
		}
		// What stays once unmounted (as after a restart): the empty
		// placeholder only, not the tmpfs's directory.
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 || entries[0].Name() != "criu.kdat" {
			t.Errorf("placeholder %v: left in the directory: %v", placeholder, entries)
		}
		if present, err := kerndatPresent(path); err != nil || present {
			t.Errorf("placeholder %v: kerndatPresent = %v, %v for the empty placeholder", placeholder, present, err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}

	// Not an empty regular file: refused, and left as it was.
	full := filepath.Join(dir, "full")
	if err := os.WriteFile(full, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mountKerndat(full, data); err == nil {
		unix.Unmount(full, unix.MNT_DETACH)
		t.Error("a non-empty file was mounted over")
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(full, link); err != nil {
		t.Fatal(err)
	}
	if err := mountKerndat(link, data); err == nil {
		unix.Unmount(link, unix.MNT_DETACH)
		t.Error("a symbolic link was followed")
	}
	if _, err := kerndatPresent(link); err == nil {
		t.Error("kerndatPresent accepted a symbolic link")
	}
	if b, _ := os.ReadFile(full); string(b) != "x" {
		t.Errorf("the refused file now holds %q", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("left in the directory: %v", entries)
	}
}

// TestWarmKerndat: after WarmKerndat, a CRIU run loads its kernel cache
// instead of probing the kernel, whether /run is a tmpfs (CRIU's own cache,
// written by its first run) or not (the cache WarmKerndat mounted). A cache
// this test mounted is unmounted at its end.
func TestWarmKerndat(t *testing.T) {
	bin := realCRIU(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mounted, err := WarmKerndat(ctx, bin.Path)
	if err != nil {
		t.Fatal(err)
	}
	if mounted {
		t.Cleanup(func() {
			if err := unix.Unmount(KerndatCache, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount the cache: %v", err)
			}
			os.Remove(KerndatCache)
		})
	}
	runTmpfs, err := isTmpfs(filepath.Dir(KerndatCache))
	if err != nil {
		t.Fatal(err)
	}
	if !runTmpfs {
		present, err := kerndatPresent(KerndatCache)
		if err != nil || !present {
			t.Fatalf("after WarmKerndat (mounted %v): cache present %v, %v", mounted, present, err)
		}
		// A second call finds it and leaves it.
		again, err := WarmKerndat(ctx, bin.Path)
		if err != nil || again {
			t.Errorf("second WarmKerndat: mounted %v, %v; want nothing done", again, err)
		}
	}
	for i := range 2 { // on a tmpfs /run, CRIU's first run writes the cache
		dir := t.TempDir()
		if out, err := exec.CommandContext(ctx, bin.Path, "check", "-v4", "-W", dir, "-o", "check.log").CombinedOutput(); err != nil {
			t.Logf("criu check: %v: %s", err, out)
		}
		log, err := os.ReadFile(filepath.Join(dir, "check.log"))
		if err != nil {
			t.Fatal(err)
		}
		loaded := strings.Contains(string(log), "Loaded kdat cache from "+KerndatCache)
		if loaded {
			break
		}
		if i == 1 || !runTmpfs {
			line, _, _ := strings.Cut(string(log), "\n")
			t.Fatalf("CRIU did not load %s (tmpfs /run: %v, mounted here: %v); its log begins: %s", KerndatCache, runTmpfs, mounted, line)
		}
	}
}

// TestKerndatState: what `torpor doctor` says of each kind of cache.
func TestKerndatState(t *testing.T) {
	testutil.RequireRoot(t, "mounts tmpfs")
	dir := t.TempDir()
	if tmpfs, err := isTmpfs(dir); err != nil || tmpfs {
		t.Fatalf("the test's directory %s must not be a tmpfs (%v)", dir, err)
	}
	path := filepath.Join(dir, "criu.kdat")
	check := func(what string, wantOK bool, wantDetail string) {
		t.Helper()
		ok, detail, remedy, err := kerndatState(path)
		if err != nil || ok != wantOK || !strings.Contains(detail, wantDetail) || (!ok && remedy == "") {
			t.Errorf("%s: ok %v, %q, remedy %q, %v; want ok %v and %q", what, ok, detail, remedy, err, wantOK, wantDetail)
		}
	}
	check("nothing there", false, "holds no cache")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	check("an empty placeholder", false, "holds no cache")
	if err := mountKerndat(path, []byte("cache")); err != nil {
		t.Fatal(err)
	}
	check("mounted", true, "mounted from a tmpfs")
	if err := unix.Unmount(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("cache"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("a file on disk", false, "disk file system")
	if err := unix.Mount("kdat-test", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	check("a tmpfs directory", true, "is a tmpfs")
}
