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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/internal/pki"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// shimTLS makes a CA with a shim certificate and returns the TLS
// configurations a shim serves and dials other shims with.
func shimTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Issue(dir, "shim", pki.RoleBoth, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	cert, key := pki.CertPaths(dir, "shim")
	if server, err = pki.ServerConfig(filepath.Join(dir, pki.CAFile), cert, key); err != nil {
		t.Fatal(err)
	}
	if client, err = pki.ClientConfig(filepath.Join(dir, pki.CAFile), cert, key, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	return server, client
}

// serveImages serves is's images over mutual TLS and returns the address.
func serveImages(t *testing.T, stls *tls.Config, is agentapi.ImageServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(stls)))
	apiv1.RegisterShimServer(gs, agentapi.Server{ImageServer: is})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func imageAgent(t *testing.T, host string, peer *tls.Config) *Agent {
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
		if err := os.MkdirAll(filepath.Join(out, filepath.Dir(name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src.nodes[key("j", "n0")] = &node{job: "j", spec: agentapi.NodeSpec{Name: "n0"}, local: "j/3"}
	addr := serveImages(t, stls, src)

	dir, err := dst.fetchImages(context.Background(), "j", "n0", "j/3", addr)
	if err != nil {
		t.Fatal(err)
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
		if _, err := dst.fetchImages(context.Background(), "j", c.node, c.ckpt, addr); err == nil {
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
type forgedImages []struct{ name, data string }

func (f forgedImages) SendImages(_ context.Context, _ agentapi.NodeRef, _ string, send func(string, []byte) error) error {
	for _, c := range f {
		if err := send(c.name, []byte(c.data)); err != nil {
			return err
		}
	}
	return nil
}

// TestFetchRefusesForgedNames: names that leave the directory, data before
// any name, a file sent twice: refused, with nothing written outside and
// nothing left inside.
func TestFetchRefusesForgedNames(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	stls, ctls := shimTLS(t)
	dst := imageAgent(t, "h2", ctls)
	for _, f := range []forgedImages{
		{{"../../../escaped", "x"}},
		{{"/tmp/absolute", "x"}},
		{{"", "no name"}},
		{{"a.img", "1"}, {"a.img", "2"}},
		{{`dir\..\b.img`, "x"}},
	} {
		addr := serveImages(t, stls, f)
		_, err := dst.fetchImages(context.Background(), "j", "n0", "j/1", addr)
		if err == nil {
			t.Fatalf("%v accepted", f)
		}
		if strings.Contains(f[0].name, "..") && !errors.Is(err, catalog.ErrCorrupt) {
			t.Fatalf("%v: %v, want ErrCorrupt", f, err)
		}
		if _, err := os.Stat(dst.migrationDir("j", "n0", "in")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%v: the refused fetch left its directory (%v)", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dst.cfg.ImageDir), "escaped")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a forged name wrote outside the image directory")
	}
}
