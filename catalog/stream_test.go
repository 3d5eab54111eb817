package catalog

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStreamHasher: files hashed while a writer appends to them, and files
// that were complete when the hasher started, give the node manifest a
// second pass would; a file changed after it was hashed is hashed again.
func TestStreamHasher(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, dir string, sums Sums) {
		t.Helper()
		streamed, err := WriteNodeManifestWith(ctx, dir, sums)
		if err != nil {
			t.Fatal(err)
		}
		full, err := WriteNodeManifest(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(streamed, full) {
			t.Fatalf("with the streamed sums\n%+v\nhashed again\n%+v", streamed, full)
		}
	}
	t.Run("as written", func(t *testing.T) {
		dir, sums := streamWrite(t)
		check(t, dir, sums)
	})
	t.Run("there before", func(t *testing.T) {
		// A file of a followed name that was there before the hasher, then
		// truncated and written again, is not taken for one appended to.
		dir := filepath.Join(t.TempDir(), "n0")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "pages-1.img")
		if err := os.WriteFile(p, bytes.Repeat([]byte("old"), 50000), 0o600); err != nil {
			t.Fatal(err)
		}
		h := StartStreamHasher(dir, func(name string) bool { return strings.HasPrefix(name, "pages-") })
		defer h.Stop()
		time.Sleep(20 * time.Millisecond)
		if err := os.WriteFile(p, bytes.Repeat([]byte("new!"), 50000), 0o600); err != nil {
			t.Fatal(err)
		}
		sums, err := h.Finish(ctx)
		if err != nil {
			t.Fatal(err)
		}
		check(t, dir, sums)
	})
	t.Run("rewritten after", func(t *testing.T) {
		dir, sums := streamWrite(t)
		// Rewritten in place at the same size after it was hashed.
		time.Sleep(20 * time.Millisecond) // a new modification time even with coarse clocks
		f, err := os.OpenFile(filepath.Join(dir, "pages-2.img"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("changed"), 1000); err != nil {
			t.Fatal(err)
		}
		f.Close()
		// Replaced by another file (the way FixTCPWindows rewrites images).
		data, _ := os.ReadFile(filepath.Join(dir, "pages-1.img"))
		data[5] ^= 1
		tmp := filepath.Join(dir, "pages-1.img.tmp")
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "pages-1.img")); err != nil {
			t.Fatal(err)
		}
		check(t, dir, sums)
	})
}

// streamWrite writes a node directory while a StreamHasher follows it: a
// file complete before the hasher starts, two followed files appended to in
// pieces, with pauses the hasher catches up in, and one file not followed.
func streamWrite(t *testing.T) (string, Sums) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "n0")
	if err := os.MkdirAll(filepath.Join(dir, "torpor-app"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "torpor-app", "0.data"), bytes.Repeat([]byte("app"), 100000), 0o600); err != nil {
		t.Fatal(err)
	}
	h := StartStreamHasher(dir, func(name string) bool { return strings.HasPrefix(name, "pages-") })
	defer h.Stop()
	chunk := bytes.Repeat([]byte{0}, 64<<10)
	files := map[string]*os.File{}
	for _, name := range []string{"pages-1.img", "pages-2.img", "core-1.img"} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = f
	}
	for i := 0; i < 48; i++ {
		for name, f := range files {
			for j := range chunk {
				chunk[j] = byte(i + j + len(name))
			}
			if _, err := f.Write(chunk[:len(chunk)-i]); err != nil {
				t.Fatal(err)
			}
		}
		if i%8 == 0 {
			time.Sleep(3 * time.Millisecond)
		}
	}
	for _, f := range files {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	sums, err := h.Finish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pages-1.img", "pages-2.img", "torpor-app/0.data"} {
		if _, ok := sums[name]; !ok {
			t.Fatalf("no streamed sum of %s: %v", name, sums)
		}
	}
	if _, ok := sums["core-1.img"]; ok {
		t.Fatal("core-1.img was hashed while written, though not followed")
	}
	return dir, sums
}

// TestStreamHasherStop: Stop ends a hasher whose writer failed, and may
// follow Finish.
func TestStreamHasherStop(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := StartStreamHasher(dir, func(string) bool { return true })
	h.Stop()
	h.Stop()
	h = StartStreamHasher(dir, func(string) bool { return true })
	if _, err := h.Finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.Stop()
}

// TestStreamHasherRelease: what a reader released of a followed file is
// freed (a hole) once hashed, up to the last whole page before the released
// offset; the sums are those of the bytes written, and the node manifest
// takes them (hashing the file again would read the hole's zeros). After
// Finish, Release changes nothing.
func TestStreamHasherRelease(t *testing.T) {
	for _, tc := range []struct {
		name     string
		released int64 // -1: everything written
		wantData int64 // the first offset SEEK_DATA finds; -1: none (all a hole)
	}{
		{"all", -1, 479232}, // 480000 bytes: the last, partial page stays
		{"part", 100000, 98304},
		{"none", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "n0")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			h := StartStreamHasher(dir, func(name string) bool { return strings.HasPrefix(name, "pages-") })
			defer h.Stop()
			p := filepath.Join(dir, "pages-1.img")
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			want := newBLAKE3()
			var written int64
			chunk := make([]byte, 60000) // not a multiple of the page size
			for i := 0; i < 8; i++ {
				for j := range chunk {
					chunk[j] = byte(i*7 + j%251 + 1)
				}
				if _, err := f.Write(chunk); err != nil {
					t.Fatal(err)
				}
				want.Write(chunk)
				written += int64(len(chunk))
				if tc.released < 0 {
					h.Release("pages-1.img", written)
				}
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.released > 0 {
				h.Release("pages-1.img", tc.released)
			}
			sums, err := h.Finish(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			h.Release("pages-1.img", written) // after Finish: nothing
			wantSum := hex.EncodeToString(want.Sum(nil))
			if got := sums["pages-1.img"]; got.Digest != wantSum || got.Size != written {
				t.Fatalf("sum %+v, want %s of %d bytes", got, wantSum, written)
			}
			nm, err := WriteNodeManifestWith(context.Background(), dir, sums)
			if err != nil {
				t.Fatal(err)
			}
			if len(nm.Files) != 1 || nm.Files[0].BLAKE3 != wantSum {
				t.Fatalf("node manifest %+v, want pages-1.img with %s", nm.Files, wantSum)
			}
			rf, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer rf.Close()
			data, err := unix.Seek(int(rf.Fd()), 0, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				data = -1
			} else if err != nil {
				t.Fatal(err)
			}
			if data != tc.wantData {
				t.Fatalf("first data at %d, want %d (-1: the file is all a hole)", data, tc.wantData)
			}
			if st, _ := rf.Stat(); st.Size() != written {
				t.Fatalf("size %d after the holes, want %d", st.Size(), written)
			}
		})
	}
}
