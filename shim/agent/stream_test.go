package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/internal/pki"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// shimTLS makes a CA with a shim certificate and returns the TLS
// configurations a shim serves and dials other shims with.
func shimTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Issue(dir, "shim", pki.RoleBoth, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if server, client, err = pki.Configs(dir, "shim", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	return server, client
}

// serveImages serves is's images over mutual TLS and returns the address.
func serveImages(t testing.TB, stls *tls.Config, is agentapi.ImageServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := agentapi.NewShimServer(stls, agentapi.Server{ImageServer: is})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func imageAgent(t testing.TB, host string, peer *tls.Config) *Agent {
	t.Helper()
	a, err := New(Config{Host: host, Bridge: "br0", RunDir: t.TempDir(), ImageDir: filepath.Join(t.TempDir(), "images"), PeerTLS: peer})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// readTree returns every regular file below dir, by relative name.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStreamImages: a destination shim fetches the images of the source's
// local dump over mutual TLS, files of every size and in subdirectories,
// byte for byte; the source sends only the images of the dump asked for.
func TestStreamImages(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	stls, ctls := shimTLS(t)
	src, dst := imageAgent(t, "h1", ctls), imageAgent(t, "h2", ctls)
	out, err := src.freshMigrationDir("j", "n0", "out")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{
		"pages-1.img":           bytes.Repeat([]byte("page"), 3*imageChunk/4+17), // three chunks
		"core-1.img":            []byte("core"),
		"empty.img":             {},
		"torpor-files/x/a.data": []byte("shared"),
	}
	for name, data := range want {
		if name == "pages-1.img" {
			continue // written while the fetch follows it
		}
		if err := os.MkdirAll(filepath.Join(out, filepath.Dir(name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n := &node{job: "j", spec: agentapi.NodeSpec{Name: "n0"}}
	src.nodes[key("j", "n0")] = n
	addr := serveImages(t, stls, src)

	// The fetch begins before the dump: it waits for the dump, follows
	// the memory image CRIU appends to, and takes the rest at its end.
	fetched := make(chan error, 1)
	var dir, sum string
	go func() {
		var err error
		dir, sum, err = dst.fetchImages(context.Background(), "j", "n0", "j/3", addr)
		fetched <- err
	}()
	n.setLocal("j/3")
	pages := want["pages-1.img"]
	f, err := os.OpenFile(filepath.Join(out, "pages-1.img"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	half := len(pages) / 2
	if _, err := f.Write(pages[:half]); err != nil {
		t.Fatal(err)
	}
	// What is written while the dump runs arrives before it ends.
	in := filepath.Join(dst.migrationDir("j", "n0", "in"), "pages-1.img")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if st, err := os.Stat(in); err == nil && st.Size() == int64(half) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first %d bytes of the memory image never arrived while the dump ran", half)
		}
	}
	if _, err := f.Write(pages[half:]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	n.endLocal("abc123", nil)
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	if sum != "abc123" {
		t.Fatalf("the node manifest digest arrived as %q", sum)
	}
	// Sent whole (the digest goes last, after the source dropped them):
	// nothing reads the source's images again.
	if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the source kept its sent images in %s (%v)", out, err)
	}
	if dir != dst.migrationDir("j", "n0", "in") || filepath.Base(dir) != "n0" {
		t.Fatalf("fetched into %s", dir)
	}
	got := readTree(t, dir)
	if len(got) != len(want) {
		t.Fatalf("fetched %d files, want %d", len(got), len(want))
	}
	for name, data := range want {
		if !bytes.Equal(got[name], data) {
			t.Fatalf("%s: fetched %d bytes that differ from the %d sent", name, len(got[name]), len(data))
		}
	}

	// Another checkpoint's images, or another job-node's: none sent, and
	// nothing is left of the attempt.
	for _, c := range []struct{ node, ckpt string }{{"n0", "j/2"}, {"n1", "j/3"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, _, err := dst.fetchImages(ctx, "j", c.node, c.ckpt, addr)
		cancel()
		if err == nil {
			t.Fatalf("fetched the images of %s for %s", c.node, c.ckpt)
		}
		if _, err := os.Stat(dst.migrationDir("j", c.node, "in")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a failed fetch left %s (%v)", dst.migrationDir("j", c.node, "in"), err)
		}
	}
	// The job-node leaves: both sides' images go.
	src.dropMigrationImages("j", "n0")
	dst.dropMigrationImages("j", "n0")
	for _, d := range []string{out, dir} {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s is still there (%v)", d, err)
		}
	}
}

// forgedImages sends what a test tells it to, whatever was asked.
type forgedImages []agentapi.ImageChunk

func (f forgedImages) SendImages(_ context.Context, _ agentapi.NodeRef, _ string, send func(agentapi.ImageChunk) error) (string, error) {
	for _, c := range f {
		if err := send(c); err != nil {
			return "", err
		}
	}
	return "abc", nil
}

func (f forgedImages) SendStored(ctx context.Context, _, _ string, send func(agentapi.ImageChunk) error) (string, error) {
	return f.SendImages(ctx, agentapi.NodeRef{}, "", send)
}

// TestFetchRefusesForgedNames: names that leave the directory, data before
// any name, a file sent twice: refused, with nothing written outside and
// nothing left inside.
func TestFetchRefusesForgedNames(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	stls, ctls := shimTLS(t)
	dst := imageAgent(t, "h2", ctls)
	x := []byte("x")
	for _, f := range []forgedImages{
		{{Name: "../../../escaped", Data: x}},
		{{Name: "/tmp/absolute", Data: x}},
		{{Data: []byte("no name")}},
		{{Name: "a.img", Data: x}, {Name: "a.img", Data: x}},            // again from 0
		{{Name: "a.img", Data: x}, {Name: "a.img", Offset: 5, Data: x}}, // a hole
		{{Name: "b.img", Offset: 4096, Data: x}},                        // not from its start
		{{Name: `dir\..\b.img`, Data: x}},
	} {
		addr := serveImages(t, stls, f)
		_, _, err := dst.fetchImages(context.Background(), "j", "n0", "j/1", addr)
		if err == nil {
			t.Fatalf("%v accepted", f)
		}
		if !errors.Is(err, catalog.ErrCorrupt) {
			t.Fatalf("%v: %v, want ErrCorrupt", f, err)
		}
		if _, err := os.Stat(dst.migrationDir("j", "n0", "in")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%v: the refused fetch left its directory (%v)", f, err)
		}
	}
	// A source that fails halfway (a dump that failed, a shim that died).
	addr := serveImages(t, stls, truncatedImages{})
	if _, _, err := dst.fetchImages(context.Background(), "j", "n0", "j/1", addr); err == nil || !strings.Contains(err.Error(), "the dump failed") {
		t.Fatalf("a source that failed halfway: %v", err)
	}
	if _, err := os.Stat(dst.migrationDir("j", "n0", "in")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the failed fetch left its directory (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dst.cfg.ImageDir), "escaped")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a forged name wrote outside the image directory")
	}
}

// truncatedImages sends part of a file and then fails.
type truncatedImages struct{}

func (truncatedImages) SendImages(_ context.Context, _ agentapi.NodeRef, _ string, send func(agentapi.ImageChunk) error) (string, error) {
	if err := send(agentapi.ImageChunk{Name: "pages-1.img", Data: []byte("half")}); err != nil {
		return "", err
	}
	return "", errors.New("the dump failed")
}

func (t truncatedImages) SendStored(ctx context.Context, _, _ string, send func(agentapi.ImageChunk) error) (string, error) {
	return t.SendImages(ctx, agentapi.NodeRef{}, "", send)
}
