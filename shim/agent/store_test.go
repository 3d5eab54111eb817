package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/shim/appfiles"
)

// storeImages writes files as job-node node's images of handle into a's
// store, with their node manifest, and returns the manifest's SHA-256.
func storeImages(t *testing.T, a *Agent, handle, node string, files map[string][]byte) string {
	t.Helper()
	dir, err := a.storeDir(handle, node)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.makeInStore(dir, freshDir(dir)); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := catalog.WriteNodeManifest(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	sum, err := catalog.NodeManifestSHA256(dir)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestCheckpointStore: a shim copies a host-local checkpoint's images from
// another shim's store over mutual TLS, byte for byte, only when they
// verify against the digest it was given, never leaving a partial copy;
// it lists what it holds, copies nothing twice, keeps to a rate and drops
// a checkpoint whole.
func TestCheckpointStore(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	stls, ctls := shimTLS(t)
	src, dst := imageAgent(t, "h1", ctls), imageAgent(t, "h2", ctls)
	files := map[string][]byte{
		"pages-1.img":           bytes.Repeat([]byte("page"), imageChunk/2+3), // three chunks
		"core-1.img":            []byte("core"),
		"torpor-files/x/a.data": []byte("shared"),
	}
	sum := storeImages(t, src, "j/000002", "n0", files)
	addr := serveImages(t, stls, src)
	ctx := context.Background()

	// A digest that is not the images': refused, nothing kept.
	other := strings.Repeat("0", 64)
	if _, err := dst.Fetch(ctx, "j/000002", "n0", addr, other, 0); !errors.Is(err, agentapi.ErrCorrupt) {
		t.Fatalf("fetch against another digest: %v, want corrupt", err)
	}
	dir, _ := dst.storeDir("j/000002", "n0")
	for _, d := range []string{dir, filepath.Join(dst.cfg.ImageDir, "fetching")} {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a refused fetch left %s (%v)", d, err)
		}
	}
	// Names that leave the store, a handle that is none: refused before
	// anything is asked.
	for _, c := range []struct{ handle, node string }{{"j/000002", "../n0"}, {"../j/000002", "n0"}, {"j/2", "n0"}, {"j", "n0"}} {
		if _, err := dst.Fetch(ctx, c.handle, c.node, addr, sum, 0); !errors.Is(err, agentapi.ErrInvalid) {
			t.Fatalf("fetch %s of %s: %v, want invalid", c.node, c.handle, err)
		}
	}

	// The right digest: copied whole, and at most at the rate asked.
	rate := int64(len(files["pages-1.img"])) * 4 // ~0.25 s for the memory image
	start := time.Now()
	n, err := dst.Fetch(ctx, "j/000002", "n0", addr, sum, rate)
	if err != nil {
		t.Fatal(err)
	}
	if took, least := time.Since(start), 200*time.Millisecond; took < least {
		t.Fatalf("fetched %d bytes at %d bytes/s in %v, want at least %v", n, rate, took, least)
	}
	got := readTree(t, dir)
	for name, data := range files {
		if !bytes.Equal(got[name], data) {
			t.Fatalf("%s: copied %d bytes that differ from the %d held", name, len(got[name]), len(data))
		}
	}
	if heldSHA256(dir) != sum {
		t.Fatalf("the copy's node manifest is %q, want %s", heldSHA256(dir), sum)
	}
	if n, err := dst.Fetch(ctx, "j/000002", "n0", addr, sum, 0); err != nil || n != 0 {
		t.Fatalf("fetch of a copy held already: %d bytes, %v; want 0, nil", n, err)
	}
	// Two fetches of one copy at once (a replica and a restart): one
	// copies, the other finds it held.
	if err := dst.Drop(ctx, "j/000002"); err != nil {
		t.Fatal(err)
	}
	both := make(chan int64, 2)
	for range 2 {
		go func() {
			n, err := dst.Fetch(ctx, "j/000002", "n0", addr, sum, 0)
			if err != nil {
				t.Error(err)
			}
			both <- n
		}()
	}
	if n1, n2 := <-both, <-both; (n1 == 0) == (n2 == 0) {
		t.Fatalf("two fetches at once copied %d and %d bytes; want one copy", n1, n2)
	}
	if heldSHA256(dir) != sum {
		t.Fatal("the copy made by two fetches at once does not verify")
	}
	held, err := dst.Held(ctx, "j", false)
	if err != nil || len(held) != 1 || held[0] != (agentapi.HeldImages{Checkpoint: "j/000002", Node: "n0", NodeManifestSHA256: sum}) {
		t.Fatalf("held: %+v, %v", held, err)
	}

	// The source's copy rots: its images fail their manifest, and a copy
	// of them is refused; the source, which verifies what it sends, sets
	// its copy aside.
	src2 := storeImages(t, src, "j/000003", "n0", files)
	sd, _ := src.storeDir("j/000003", "n0")
	if err := os.WriteFile(filepath.Join(sd, "core-1.img"), []byte("cORE"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Fetch(ctx, "j/000003", "n0", addr, src2, 0); !errors.Is(err, agentapi.ErrCorrupt) || !strings.Contains(err.Error(), "core-1.img") || !strings.Contains(err.Error(), "set aside") {
		t.Fatalf("fetch of rotten images: %v, want corrupt naming core-1.img, set aside by the source", err)
	}
	if held, _ := dst.Held(ctx, "j", false); len(held) != 1 {
		t.Fatalf("after a refused copy the store holds %+v", held)
	}
	if held, _ := src.Held(ctx, "j", false); len(held) != 1 || held[0].Checkpoint != "j/000002" {
		t.Fatalf("the source still lists its rotten copy: %+v", held)
	}
	if got, err := os.ReadFile(filepath.Join(src.cfg.ImageDir, setAsideKind, "j", "000003", "n0", "core-1.img")); err != nil || string(got) != "cORE" {
		t.Fatalf("the source's rotten copy was not kept aside: %q, %v", got, err)
	}
	// Images the source does not hold: not found.
	if _, err := dst.Fetch(ctx, "j/000004", "n0", addr, sum, 0); !errors.Is(err, agentapi.ErrNotFound) {
		t.Fatalf("fetch of images nobody holds: %v, want not found", err)
	}

	if err := dst.Drop(ctx, "j/000002"); err != nil {
		t.Fatal(err)
	}
	if held, err := dst.Held(ctx, "j", false); err != nil || len(held) != 0 {
		t.Fatalf("after drop: %+v, %v", held, err)
	}
	if _, err := os.Stat(filepath.Join(dst.storeRoot(), "j")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the job's directory is left after its last checkpoint was dropped (%v)", err)
	}
}

// TestHeldWhileDropped: listing the store while checkpoints are dropped
// (pruned) from it never fails: a checkpoint that goes while it is listed
// is left out, the others are listed.
func TestHeldWhileDropped(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	a := imageAgent(t, "h1", nil)
	ctx := context.Background()
	files := map[string][]byte{"core-1.img": []byte("core")}
	const n = 200
	for i := 1; i <= n; i++ {
		storeImages(t, a, fmt.Sprintf("j/%06d", i), "n0", files)
	}
	keep := storeImages(t, a, fmt.Sprintf("j/%06d", n+1), "n0", files)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= n; i++ {
			if err := a.Drop(ctx, fmt.Sprintf("j/%06d", i)); err != nil {
				t.Error(err)
			}
		}
	}()
	for listing := true; listing; {
		select {
		case <-done:
			listing = false
		default:
		}
		held, err := a.Held(ctx, "j", false)
		if err != nil {
			t.Fatalf("held while checkpoints were dropped: %v", err)
		}
		found := false
		for _, h := range held {
			found = found || h.Checkpoint == fmt.Sprintf("j/%06d", n+1) && h.NodeManifestSHA256 == keep
		}
		if !found {
			t.Fatalf("the checkpoint that stays is not listed: %+v", held)
		}
	}
}

// TestKeptManifests: a job manifest is kept only with images of its
// checkpoint, listed by handle, not taken for a job-node, gone with a
// Drop; a link in its place is not followed.
func TestKeptManifests(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	_, ctls := shimTLS(t)
	a := imageAgent(t, "h1", ctls)
	ctx := context.Background()
	man := []byte(`{"format":1,"hmac":"00","payload":{}}`)
	if err := a.KeepManifest(ctx, "j/000002", man); !errors.Is(err, agentapi.ErrNotFound) {
		t.Fatalf("kept without images: %v, want not found", err)
	}
	for _, h := range []string{"../j/000002", "j/2", "j"} {
		if err := a.KeepManifest(ctx, h, man); !errors.Is(err, agentapi.ErrInvalid) {
			t.Fatalf("handle %q: %v, want invalid", h, err)
		}
	}
	sum := storeImages(t, a, "j/000002", "n0", map[string][]byte{"core-1.img": []byte("core")})
	storeImages(t, a, "k/000001", "n0", map[string][]byte{"core-1.img": []byte("core")})
	if err := a.KeepManifest(ctx, "j/000002", nil); !errors.Is(err, agentapi.ErrInvalid) {
		t.Fatalf("an empty manifest: %v, want invalid", err)
	}
	if err := a.KeepManifest(ctx, "j/000002", man); err != nil {
		t.Fatal(err)
	}
	kept, err := a.Manifests(ctx)
	if err != nil || len(kept) != 1 || !bytes.Equal(kept["j/000002"], man) {
		t.Fatalf("Manifests = %q, %v", kept, err)
	}
	held, err := a.Held(ctx, "j", false)
	if err != nil || len(held) != 1 || held[0].Node != "n0" || held[0].NodeManifestSHA256 != sum {
		t.Fatalf("Held with a kept manifest: %+v, %v", held, err)
	}
	// A link where the manifest goes: not followed.
	kdir, _ := a.storeDir("k/000001", "n0")
	if err := os.Symlink(filepath.Join(filepath.Dir(filepath.Dir(kdir)), "..", "j", "000002", keptManifestName), filepath.Join(filepath.Dir(kdir), keptManifestName)); err != nil {
		t.Fatal(err)
	}
	if kept, _ := a.Manifests(ctx); len(kept) != 1 {
		t.Fatalf("a link was read as a kept manifest: %q", kept)
	}
	if err := a.Drop(ctx, "j/000002"); err != nil {
		t.Fatal(err)
	}
	if kept, err := a.Manifests(ctx); err != nil || len(kept) != 0 {
		t.Fatalf("after Drop: %q, %v", kept, err)
	}
}

// TestCorruptCopySetAside: a restore from this store's copy that fails
// verification moves the copy out of the store (Held stops listing it, so
// the coordinator fetches another host's) without deleting it, says so in
// the error, and a later Drop of the checkpoint removes it; a good copy
// fetched in its place can be set aside again.
func TestCorruptCopySetAside(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	a := imageAgent(t, "h1", nil)
	ctx := context.Background()
	files := map[string][]byte{"core-1.img": []byte("core"), appfiles.DirName + "/x/a.data": []byte("the application's file")}
	dir, err := a.storeDir("j/000002", "n0")
	if err != nil {
		t.Fatal(err)
	}
	aside := filepath.Join(a.cfg.ImageDir, setAsideKind, "j", "000002", "n0")
	spec := agentapi.NodeSpec{Name: "n0"}
	for round := 1; round <= 2; round++ {
		sum := storeImages(t, a, "j/000002", "n0", files)
		other := storeImages(t, a, "j/000002", "n1", files) // stays
		bad := filepath.Join(dir, appfiles.DirName, "x", "a.data")
		if err := os.WriteFile(bad, []byte("the application's filE"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := a.RestoreFiles(ctx, "j", spec, agentapi.RestoreRequest{Stored: true, Checkpoint: "j/000002", NodeManifestSHA256: sum})
		if !errors.Is(err, agentapi.ErrCorrupt) || !strings.Contains(err.Error(), "a.data") || !strings.Contains(err.Error(), "set aside") {
			t.Fatalf("round %d: restore from a corrupt copy: %v, want corrupt naming a.data and saying it was set aside", round, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("round %d: the corrupt copy is still in the store (%v)", round, err)
		}
		got, err := os.ReadFile(filepath.Join(aside, appfiles.DirName, "x", "a.data"))
		if err != nil || string(got) != "the application's filE" {
			t.Fatalf("round %d: the copy set aside: %q, %v", round, got, err)
		}
		held, err := a.Held(ctx, "j", false)
		if err != nil || len(held) != 1 || held[0].Node != "n1" || held[0].NodeManifestSHA256 != other {
			t.Fatalf("round %d: held after the copy was set aside: %+v, %v; want n1 only", round, held, err)
		}
	}
	if err := a.Drop(ctx, "j/000002"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(a.cfg.ImageDir, setAsideKind), filepath.Join(a.cfg.ImageDir, "checkpoints", "j")} {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a dropped checkpoint left %s (%v)", d, err)
		}
	}
}

// TestHeldVerify: Held with verify hashes every copy. A copy with one
// changed byte is reported corrupt (naming the file) and set aside; Held
// without verify lists it until then, and does not after. A good copy is
// listed as it is.
func TestHeldVerify(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	a := imageAgent(t, "h1", nil)
	ctx := context.Background()
	files := map[string][]byte{"core-1.img": []byte("core"), "pages-1.img": bytes.Repeat([]byte("p"), 3<<20)}
	bad := storeImages(t, a, "j/000003", "n0", files)
	good := storeImages(t, a, "j/000003", "n1", files)
	dir, err := a.storeDir("j/000003", "n0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "pages-1.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("q"), 2<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if held, err := a.Held(ctx, "j", false); err != nil || len(held) != 2 {
		t.Fatalf("held before a verification: %+v, %v; want both copies (their node manifests are intact)", held, err)
	}
	held, err := a.Held(ctx, "j", true)
	if err != nil || len(held) != 2 {
		t.Fatalf("held with verify: %+v, %v", held, err)
	}
	for _, h := range held {
		switch h.Node {
		case "n0":
			if h.NodeManifestSHA256 != bad || !strings.Contains(h.Corrupt, "pages-1.img") || !strings.Contains(h.Corrupt, "set aside") {
				t.Errorf("the rotten copy: %+v; want corrupt naming pages-1.img and saying it was set aside", h)
			}
		case "n1":
			if h.NodeManifestSHA256 != good || h.Corrupt != "" {
				t.Errorf("the good copy: %+v", h)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(a.cfg.ImageDir, setAsideKind, "j", "000003", "n0", "pages-1.img")); err != nil {
		t.Errorf("the rotten copy was not set aside: %v", err)
	}
	if held, err := a.Held(ctx, "j", true); err != nil || len(held) != 1 || held[0].Node != "n1" || held[0].Corrupt != "" {
		t.Fatalf("held with verify after the copy was set aside: %+v, %v; want n1 only, good", held, err)
	}
}
