package catalog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fieldBytes is n bytes of a float64 field such as a stencil's: a hot spot
// over an ambient temperature, smooth near it, exactly ambient far away.
// Compressible, but neither zeros nor random.
func fieldBytes(n int, at float64) []byte {
	b := make([]byte, n)
	cells := float64(n / 8)
	for i := 0; i+8 <= n; i += 8 {
		d := (float64(i/8) - at*cells) / (cells / 48)
		binary.LittleEndian.PutUint64(b[i:], math.Float64bits(293.15+80*math.Exp(-d*d/2)))
	}
	return b
}

var testCodecs = []string{CodecLZ4, CodecZstd}

// compressedCheckpoint commits one job-node whose pages images a
// StreamCompressor stored with codec while they were written in pieces,
// and returns the checkpoint and the raw images.
func compressedCheckpoint(t *testing.T, codec string) (Checkpoint, map[string][]byte) {
	t.Helper()
	s := newStore(t)
	p, err := s.Begin("job")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := p.NodeDir("n0")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "torpor-app"), 0o700); err != nil {
		t.Fatal(err)
	}
	raw := map[string][]byte{
		"torpor-app/0.data": []byte("the application's file"),
		"pages-1.img":       fieldBytes(3<<20+123, 0.3),
		"pages-2.img":       fieldBytes(1<<20, 0.6),
		"pages-3.img":       {}, // CRIU writes empty ones too
		"core-1.img":        []byte("core"),
	}
	if err := os.WriteFile(filepath.Join(dir, "torpor-app/0.data"), raw["torpor-app/0.data"], 0o600); err != nil {
		t.Fatal(err)
	}
	h := StartStreamCompressor(dir, func(name string) bool { return strings.HasPrefix(name, "pages-") }, codec)
	defer h.Stop()
	for _, name := range []string{"pages-1.img", "pages-2.img", "pages-3.img", "core-1.img"} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		for data := raw[name]; len(data) > 0; {
			k := min(len(data), 100<<10)
			if _, err := f.Write(data[:k]); err != nil {
				t.Fatal(err)
			}
			data = data[k:]
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	sums, err := h.Finish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	nm, err := WriteNodeManifestWith(context.Background(), dir, sums)
	if err != nil {
		t.Fatal(err)
	}
	if nm.Format != nodeFormatCodecs {
		t.Fatalf("node manifest format %d, want %d", nm.Format, nodeFormatCodecs)
	}
	ext := CodecExt(codec)
	for _, f := range nm.Files {
		switch {
		case strings.HasPrefix(f.Path, "pages-"):
			if f.Codec != codec || !strings.HasSuffix(f.Path, ext) || f.RawSize != int64(len(raw[f.RawName()])) {
				t.Fatalf("entry %+v: want a %s copy of %d bytes", f, codec, len(raw[f.RawName()]))
			}
			if _, err := os.Stat(filepath.Join(dir, f.RawName())); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("raw %s is still there: %v", f.RawName(), err)
			}
		case f.Codec != "" || f.RawSize != 0:
			t.Fatalf("entry %+v compressed, only pages are", f)
		}
	}
	if sums["pages-1.img"+ext].Size*2 > int64(len(raw["pages-1.img"])) {
		t.Errorf("pages-1.img: %d bytes compressed to %d", len(raw["pages-1.img"]), sums["pages-1.img"+ext].Size)
	}
	cp, err := p.Commit(testManifest1())
	if err != nil {
		t.Fatal(err)
	}
	return cp, raw
}

func testManifest1() JobManifest {
	m := testManifest()
	m.Nodes = m.Nodes[:1]
	return m
}

func openNode(t *testing.T, cp Checkpoint) *NodeImages {
	t.Helper()
	imgs, err := OpenNodeImages(cp.NodeDir("n0"), cp.Manifest.Nodes[0].ManifestSHA256)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { imgs.Close() })
	return imgs
}

func scratchRoot(t *testing.T) *os.Root {
	t.Helper()
	r, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestCompressRoundTrip: pages images stored compressed while written come
// back byte for byte; the checkpoint verifies as any other.
func TestCompressRoundTrip(t *testing.T) {
	for _, codec := range testCodecs {
		t.Run(codec, func(t *testing.T) {
			cp, raw := compressedCheckpoint(t, codec)
			if err := verifyFiles(context.Background(), cp); err != nil {
				t.Fatal(err)
			}
			imgs := openNode(t, cp)
			if err := imgs.Verify(context.Background(), func(string) bool { return true }); err != nil {
				t.Fatal(err)
			}
			dst := scratchRoot(t)
			comp := imgs.Compressed()
			if len(comp) != 3 {
				t.Fatalf("%d compressed files, want 3", len(comp))
			}
			for _, f := range comp {
				if !imgs.IsCompressed(f.Path) || imgs.IsCompressed(f.RawName()) {
					t.Fatalf("IsCompressed(%s)", f.Path)
				}
				if err := imgs.Expand(context.Background(), f, dst); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(filepath.Join(dst.Name(), f.RawName()))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, raw[f.RawName()]) {
					t.Fatalf("%s: %d bytes back, %d written", f.RawName(), len(got), len(raw[f.RawName()]))
				}
			}
		})
	}
}

// TestExpandRefusesCorruption: a changed compressed file fails Expand (and
// Verify) with ErrCorrupt and leaves no raw file; so does one whose
// manifest (re-signed) records a raw size other than what it decompresses
// to, either way: a decompression bomb stops one byte past the record.
func TestExpandRefusesCorruption(t *testing.T) {
	for _, codec := range testCodecs {
		t.Run(codec, func(t *testing.T) {
			for _, tc := range []struct {
				name   string
				change func(t *testing.T, dir string, nm *NodeManifest)
				reason string
			}{
				{"byte flipped", func(t *testing.T, dir string, nm *NodeManifest) {
					p := filepath.Join(dir, "pages-1.img"+CodecExt(codec))
					data, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					data[len(data)/2] ^= 0x10
					if err := os.WriteFile(p, data, 0o600); err != nil {
						t.Fatal(err)
					}
				}, "content differs"},
				{"raw size too small", func(t *testing.T, dir string, nm *NodeManifest) {
					nm.Files[entry(nm, "pages-1.img"+CodecExt(codec))].RawSize -= 4096
				}, "more than"},
				{"raw size too large", func(t *testing.T, dir string, nm *NodeManifest) {
					nm.Files[entry(nm, "pages-1.img"+CodecExt(codec))].RawSize += 1
				}, "decompresses to"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					cp, _ := compressedCheckpoint(t, codec)
					dir := cp.NodeDir("n0")
					data, err := os.ReadFile(filepath.Join(dir, NodeManifestName))
					if err != nil {
						t.Fatal(err)
					}
					var nm NodeManifest
					if err := json.Unmarshal(data, &nm); err != nil {
						t.Fatal(err)
					}
					tc.change(t, dir, &nm)
					data, _ = json.Marshal(nm)
					if err := os.WriteFile(filepath.Join(dir, NodeManifestName), data, 0o600); err != nil {
						t.Fatal(err)
					}
					sum := sha256.Sum256(data)
					imgs, err := OpenNodeImages(dir, hex.EncodeToString(sum[:]))
					if err != nil {
						t.Fatal(err)
					}
					defer imgs.Close()
					dst := scratchRoot(t)
					f := imgs.files["pages-1.img"+CodecExt(codec)]
					err = imgs.Expand(context.Background(), f, dst)
					if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.reason) {
						t.Fatalf("Expand: %v, want ErrCorrupt saying %q", err, tc.reason)
					}
					if _, serr := os.Stat(filepath.Join(dst.Name(), "pages-1.img")); !errors.Is(serr, fs.ErrNotExist) {
						t.Fatalf("the raw file of a refused expansion is there: %v", serr)
					}
					if tc.name == "byte flipped" {
						if err := verifyFiles(context.Background(), cp); !errors.Is(err, ErrCorrupt) {
							t.Fatalf("Verify: %v, want ErrCorrupt", err)
						}
					}
				})
			}
		})
	}
}

func entry(nm *NodeManifest, path string) int {
	for i, f := range nm.Files {
		if f.Path == path {
			return i
		}
	}
	panic(path + " not listed")
}

// TestCodecManifestFormats: codec fields only in format 3, only with a
// known codec and a name for it; format 2 (no codec) is what an
// uncompressed dump still writes, and the codecs parse as users give them.
func TestCodecManifestFormats(t *testing.T) {
	d := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name string
		json string
		ok   bool
	}{
		{"format 2 raw", `{"format":2,"node":"n0","files":[{"path":"pages-1.img","size":3,"blake3":"` + d + `"}],"total_bytes":3}`, true},
		{"format 2 with a codec", `{"format":2,"node":"n0","files":[{"path":"pages-1.img.zst","size":3,"blake3":"` + d + `","codec":"zstd","raw_size":9}],"total_bytes":3}`, false},
		{"format 3", `{"format":3,"node":"n0","files":[{"path":"pages-1.img.zst","size":3,"blake3":"` + d + `","codec":"zstd","raw_size":9},{"path":"core-1.img","size":1,"blake3":"` + d + `"}],"total_bytes":4}`, true},
		{"unknown codec", `{"format":3,"node":"n0","files":[{"path":"pages-1.img.xz","size":3,"blake3":"` + d + `","codec":"xz","raw_size":9}],"total_bytes":3}`, false},
		{"wrong suffix", `{"format":3,"node":"n0","files":[{"path":"pages-1.img.lz4","size":3,"blake3":"` + d + `","codec":"zstd","raw_size":9}],"total_bytes":3}`, false},
		{"raw size without codec", `{"format":3,"node":"n0","files":[{"path":"pages-1.img","size":3,"blake3":"` + d + `","raw_size":9}],"total_bytes":3}`, false},
		{"negative raw size", `{"format":3,"node":"n0","files":[{"path":"pages-1.img.lz4","size":3,"blake3":"` + d + `","codec":"lz4","raw_size":-1}],"total_bytes":3}`, false},
		{"raw and compressed", `{"format":3,"node":"n0","files":[{"path":"pages-1.img.lz4","size":3,"blake3":"` + d + `","codec":"lz4","raw_size":9},{"path":"pages-1.img","size":1,"blake3":"` + d + `"}],"total_bytes":4}`, false},
		{"format 4", `{"format":4,"node":"n0","files":[],"total_bytes":0}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseNodeManifest([]byte(tc.json))
			if (err == nil) != tc.ok {
				t.Fatalf("parse: %v, want ok=%v", err, tc.ok)
			}
		})
	}
	for in, want := range map[string]string{"": "", "none": "", "lz4": "lz4", "zstd": "zstd"} {
		if got, err := ParseCodec(in); err != nil || got != want {
			t.Errorf("ParseCodec(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseCodec("gzip"); !errors.Is(err, ErrUnknownCodec) {
		t.Errorf("ParseCodec(gzip): %v", err)
	}
	// Raw dumps keep writing format 2, byte for byte what older torpor reads.
	s := newStore(t)
	cp := commitOne(t, s, "job")
	for _, n := range cp.Manifest.Nodes {
		data, err := os.ReadFile(filepath.Join(cp.NodeDir(n.Name), NodeManifestName))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte(`"format": 2`)) || bytes.Contains(data, []byte("codec")) || bytes.Contains(data, []byte("raw_size")) {
			t.Fatalf("uncompressed node manifest:\n%s", data)
		}
	}
}

// FuzzParseNodeManifest: whatever a node manifest says, an accepted one
// keeps codec fields to format 3, names each compressed file for its codec,
// never lists a file both raw and compressed, and has no negative size.
func FuzzParseNodeManifest(f *testing.F) {
	d := strings.Repeat("ab", 32)
	f.Add([]byte(`{"format":3,"node":"n0","files":[{"path":"pages-1.img.zst","size":3,"blake3":"` + d + `","codec":"zstd","raw_size":9}],"total_bytes":3}`))
	f.Add([]byte(`{"format":2,"node":"n0","files":[{"path":"pages-1.img","size":3,"blake3":"` + d + `"}],"total_bytes":3}`))
	f.Add([]byte(`{"format":1,"node":"n0","files":[{"path":"a","size":1,"sha256":"` + d + `"}],"total_bytes":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseNodeManifest(data)
		if err != nil {
			return
		}
		listed := map[string]bool{}
		for _, e := range m.Files {
			listed[e.Path] = true
		}
		for _, e := range m.Files {
			if e.Size < 0 || e.RawSize < 0 {
				t.Fatalf("negative size accepted: %+v", e)
			}
			if e.Codec == "" {
				continue
			}
			if m.Format != nodeFormatCodecs || !strings.HasSuffix(e.Path, CodecExt(e.Codec)) || CodecExt(e.Codec) == "" || listed[e.RawName()] {
				t.Fatalf("format %d entry %+v accepted", m.Format, e)
			}
		}
	})
}
