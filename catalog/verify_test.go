package catalog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	tests := []struct {
		name     string
		tamper   func(t *testing.T, cp Checkpoint, other Checkpoint)
		wantFile string // CorruptError.File
		wantMsg  string
	}{
		{"flipped byte in image", func(t *testing.T, cp, _ Checkpoint) {
			flipByte(t, filepath.Join(cp.Dir, "nodes/n0/pages-1.img"), 5000)
		}, "nodes/n0/pages-1.img", "content differs from the manifest"},
		{"flipped byte in nested image", func(t *testing.T, cp, _ Checkpoint) {
			flipByte(t, filepath.Join(cp.Dir, "nodes/n0/sub/tcp.img"), 0)
		}, "nodes/n0/sub/tcp.img", "content differs"},
		{"truncated image", func(t *testing.T, cp, _ Checkpoint) {
			if err := os.Truncate(filepath.Join(cp.Dir, "nodes/n1/pages-1.img"), 100); err != nil {
				t.Fatal(err)
			}
		}, "nodes/n1/pages-1.img", "size is 100 bytes, the manifest records 4096"},
		{"missing image", func(t *testing.T, cp, _ Checkpoint) {
			os.Remove(filepath.Join(cp.Dir, "nodes/n1/core-200.img"))
		}, "nodes/n1/core-200.img", "missing"},
		{"extra image", func(t *testing.T, cp, _ Checkpoint) {
			os.WriteFile(filepath.Join(cp.Dir, "nodes/n1/evil.img"), []byte("x"), 0o600)
		}, "nodes/n1/evil.img", "not listed in the node manifest"},
		{"image replaced by symlink", func(t *testing.T, cp, _ Checkpoint) {
			p := filepath.Join(cp.Dir, "nodes/n1/core-200.img")
			os.Remove(p)
			if err := os.Symlink("/etc/passwd", p); err != nil {
				t.Fatal(err)
			}
		}, "nodes/n1/core-200.img", "not a regular file"},
		{"node manifest edited to match a changed image", func(t *testing.T, cp, _ Checkpoint) {
			dir := filepath.Join(cp.Dir, "nodes/n0")
			os.WriteFile(filepath.Join(dir, "core-100.img"), []byte("evil core"), 0o600)
			if _, err := WriteNodeManifest(context.Background(), dir); err != nil {
				t.Fatal(err)
			}
		}, "nodes/n0/node-manifest.json", "the node manifest was modified"},
		{"node manifest missing", func(t *testing.T, cp, _ Checkpoint) {
			os.Remove(filepath.Join(cp.Dir, "nodes/n0/node-manifest.json"))
		}, "nodes/n0/node-manifest.json", "missing"},
		{"extra node directory", func(t *testing.T, cp, _ Checkpoint) {
			os.Mkdir(filepath.Join(cp.Dir, "nodes/n9"), 0o700)
		}, "nodes/n9", "not part of the job manifest"},
		{"job manifest payload edited", func(t *testing.T, cp, _ Checkpoint) {
			p := filepath.Join(cp.Dir, JobManifestName)
			data, _ := os.ReadFile(p)
			data = bytes.Replace(data, []byte(`"leave_running": true`), []byte(`"leave_running": false`), 1)
			os.WriteFile(p, data, 0o600)
		}, JobManifestName, "signature (HMAC-SHA256) does not match"},
		{"job manifest unsigned", func(t *testing.T, cp, _ Checkpoint) {
			p := filepath.Join(cp.Dir, JobManifestName)
			data, _ := os.ReadFile(p)
			i := bytes.Index(data, []byte(`"hmac": "`))
			copy(data[i+9:], bytes.Repeat([]byte("0"), 64))
			os.WriteFile(p, data, 0o600)
		}, JobManifestName, "signature (HMAC-SHA256) does not match"},
		{"job manifest of another checkpoint", func(t *testing.T, cp, other Checkpoint) {
			data, _ := os.ReadFile(filepath.Join(other.Dir, JobManifestName))
			os.WriteFile(filepath.Join(cp.Dir, JobManifestName), data, 0o600)
		}, JobManifestName, "belongs to checkpoint job/000001"},
		{"job manifest truncated", func(t *testing.T, cp, _ Checkpoint) {
			os.Truncate(filepath.Join(cp.Dir, JobManifestName), 40)
		}, JobManifestName, "not a torpor manifest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			other := commitOne(t, s, "job")
			cp := commitOne(t, s, "job")
			if err := s.Verify(context.Background(), cp.Handle); err != nil {
				t.Fatalf("before tampering: %v", err)
			}
			tt.tamper(t, cp, other)
			err := s.Verify(context.Background(), cp.Handle)
			t.Logf("Verify: %v", err)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Verify = %v, want ErrCorrupt", err)
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Handle != cp.Handle || ce.File != tt.wantFile {
				t.Fatalf("Verify = %#v, want CorruptError for %s file %s", err, cp.Handle, tt.wantFile)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(err.Error(), tt.wantFile) {
				t.Fatalf("Verify error %q does not say %q", err, tt.wantMsg)
			}
			// A restart's split verification fails as well, naming the
			// file: the coordinator's VerifyLayout, or a shim's check of its
			// node's images against the digest the job manifest records.
			if err := splitVerify(s, cp.Handle); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path.Base(tt.wantFile)) {
				t.Fatalf("split verification = %v, want ErrCorrupt naming %s", err, tt.wantFile)
			}
			// The untouched checkpoint still verifies.
			if err := splitVerify(s, other.Handle); err != nil {
				t.Fatalf("other checkpoint, split verification: %v", err)
			}
			if err := s.Verify(context.Background(), other.Handle); err != nil {
				t.Fatalf("other checkpoint: %v", err)
			}
			// List still shows the checkpoint; the fall-back skips it.
			cps, err := s.List("job")
			if err != nil || len(cps) != 2 {
				t.Fatalf("List = %v, %v", handles(cps), err)
			}
			got, skipped, err := s.LatestVerified(context.Background(), "job")
			if err != nil || got.Handle != other.Handle || len(skipped) != 1 || !errors.Is(skipped[0], ErrCorrupt) {
				t.Fatalf("LatestVerified = %s, %v, %v", got.Handle, skipped, err)
			}
		})
	}
}

// splitVerify is a restart's verification: VerifyLayout, then each node's
// images in full against the node manifest's digest in the job manifest.
func splitVerify(s *Store, handle string) error {
	ctx := context.Background()
	if err := s.VerifyLayout(ctx, handle); err != nil {
		return err
	}
	cp, err := s.Get(handle)
	if err != nil {
		return err
	}
	for _, n := range cp.Manifest.Nodes {
		imgs, err := OpenNodeImages(cp.NodeDir(n.Name), n.ManifestSHA256)
		if err != nil {
			return err
		}
		err = imgs.Verify(ctx, func(string) bool { return true })
		imgs.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func TestWrongKey(t *testing.T) {
	s := newStore(t)
	cp := commitOne(t, s, "job")
	s2, err := Open(s.Root(), testKey(2))
	if err != nil {
		t.Fatal(err)
	}
	err = s2.Verify(context.Background(), cp.Handle)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "signed with another key") {
		t.Fatalf("Verify with wrong key = %v", err)
	}
	cps, err := s2.List("job")
	if err != nil || len(cps) != 1 || !errors.Is(cps[0].ManifestErr, ErrCorrupt) {
		t.Fatalf("List with wrong key = %+v, %v; want the checkpoint listed with ManifestErr", cps, err)
	}
	if _, err := s2.Get(cp.Handle); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get with wrong key = %v", err)
	}
}

func TestLatestVerified(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if _, _, err := s.LatestVerified(ctx, "job"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no checkpoints: %v, want ErrNotFound", err)
	}
	c1 := commitOne(t, s, "job")
	c2 := commitOne(t, s, "job")
	c3 := commitOne(t, s, "job")

	got, skipped, err := s.LatestVerified(ctx, "job")
	if err != nil || got.Handle != c3.Handle || len(skipped) != 0 {
		t.Fatalf("all good: %s %v %v", got.Handle, skipped, err)
	}
	flipByte(t, filepath.Join(c3.Dir, "nodes/n1/pages-1.img"), 7)
	os.Remove(filepath.Join(c2.Dir, "nodes/n0/core-100.img"))
	got, skipped, err = s.LatestVerified(ctx, "job")
	if err != nil || got.Handle != c1.Handle || len(skipped) != 2 {
		t.Fatalf("fall back: %s %v %v", got.Handle, skipped, err)
	}
	if !strings.Contains(skipped[0].Error(), c3.Handle) || !strings.Contains(skipped[1].Error(), c2.Handle) {
		t.Fatalf("skipped reasons do not name the checkpoints: %v", skipped)
	}
	flipByte(t, filepath.Join(c1.Dir, "nodes/n0/pages-1.img"), 0)
	_, skipped, err = s.LatestVerified(ctx, "job")
	if !errors.Is(err, ErrCorrupt) || len(skipped) != 3 || !strings.Contains(err.Error(), "none of the 3 checkpoints") {
		t.Fatalf("all bad: %v %v", skipped, err)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Verify(cancelled, commitOne(t, s, "job").Handle); !errors.Is(err, context.Canceled) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify with cancelled context = %v", err)
	}
}

func TestWriteNodeManifest(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "n0")
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "b.img"), []byte("bbbb"), 0o644)
	os.WriteFile(filepath.Join(dir, "sub", "a.img"), []byte("a"), 0o666)
	os.WriteFile(filepath.Join(dir, ".node-manifest.json.tmp-77"), []byte("stale"), 0o600)
	m, err := WriteNodeManifest(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Node != "n0" || len(m.Files) != 2 || m.Files[0].Path != "b.img" || m.Files[1].Path != "sub/a.img" || m.TotalBytes != 5 {
		t.Fatalf("manifest = %+v", m)
	}
	// blake3("a")
	if m.Format != NodeManifestFormat || m.Files[1].BLAKE3 != "17762fddd969a453925d65717ac3eea21320b66b54342fde15128d6caf21215f" || m.Files[1].SHA256 != "" {
		t.Fatalf("format %d, blake3 %q, sha256 %q", m.Format, m.Files[1].BLAKE3, m.Files[1].SHA256)
	}
	for _, p := range []string{"b.img", "sub/a.img", NodeManifestName} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want 0600", p, st.Mode(), err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".node-manifest.json.tmp-77")); !os.IsNotExist(err) {
		t.Fatalf("stale temp manifest kept: %v", err)
	}
	// Rewriting is idempotent: the manifest does not list itself.
	m2, err := WriteNodeManifest(ctx, dir)
	if err != nil || len(m2.Files) != 2 {
		t.Fatalf("second write = %+v, %v", m2, err)
	}
	os.Symlink("b.img", filepath.Join(dir, "link.img"))
	if _, err := WriteNodeManifest(ctx, dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("symlink accepted: %v", err)
	}
}

func TestUnsupportedFormat(t *testing.T) {
	data := []byte(`{"format": 2, "hmac": "00", "payload": {"whatever": true}}`)
	_, err := ParseJobManifest(data, testKey(1))
	if !errors.Is(err, ErrUnsupportedFormat) || !strings.Contains(err.Error(), "format 2") {
		t.Fatalf("ParseJobManifest(format 2) = %v", err)
	}
}

// TestSHA256NodeManifests: a checkpoint whose node manifests are format 1
// (SHA-256 of every file, as torpor wrote them before BLAKE3) still
// verifies, whole and split, and a changed file in it is still found; a
// format 1 entry with a BLAKE3 digest is refused.
func TestSHA256NodeManifests(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	p, err := s.Begin("job")
	if err != nil {
		t.Fatal(err)
	}
	dumpNodes(t, p, smallImages())
	for node := range smallImages() {
		dir, _ := p.NodeDir(node)
		m, err := WriteNodeManifest(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		m.Format = nodeFormatSHA256
		for i, f := range m.Files {
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			m.Files[i].SHA256, m.Files[i].BLAKE3 = hex.EncodeToString(sum[:]), ""
		}
		data, _ := json.Marshal(m)
		if err := os.WriteFile(filepath.Join(dir, NodeManifestName), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := p.Commit(testManifest())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(ctx, cp.Handle); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if err := splitVerify(s, cp.Handle); err != nil {
		t.Fatalf("split verification: %v", err)
	}
	flipByte(t, filepath.Join(cp.Dir, "nodes/n0/pages-1.img"), 10)
	for what, err := range map[string]error{"Verify": s.Verify(ctx, cp.Handle), "split": splitVerify(s, cp.Handle)} {
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "sha256") {
			t.Fatalf("%s after a changed image: %v", what, err)
		}
	}
	bad := []byte(`{"format":1,"node":"n0","files":[{"path":"a","size":1,"blake3":"` + strings.Repeat("0", 64) + `"}],"total_bytes":1}`)
	if _, err := parseNodeManifest(bad); err == nil {
		t.Fatal("a format 1 node manifest with a blake3 digest parsed")
	}
}
