package catalog

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFileCheck: a file's bytes, written to its check in pieces, pass only
// when they are the whole file the node manifest records; a changed byte,
// a missing or an extra byte, and a name the manifest does not list fail as
// corrupt, naming the file.
func TestFileCheck(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n0")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"pages-1.img": strings.Repeat("page", 5000), "sub/a.data": "a", "empty.img": ""}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := WriteNodeManifest(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	sum, err := NodeManifestSHA256(dir)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := OpenNodeImages(dir, sum)
	if err != nil {
		t.Fatal(err)
	}
	defer imgs.Close()
	check := func(name, data string) error {
		c, err := imgs.Check(name)
		if err != nil {
			return err
		}
		for len(data) > 0 { // in pieces, as a sender reads it
			k := min(len(data), 3000)
			c.Write([]byte(data[:k]))
			data = data[k:]
		}
		return c.Done()
	}
	for name, data := range files {
		if err := check(name, data); err != nil {
			t.Errorf("%s, unchanged: %v", name, err)
		}
	}
	page := files["pages-1.img"]
	for what, data := range map[string]string{
		"a changed byte": page[:100] + "P" + page[101:],
		"a byte short":   page[:len(page)-1],
		"a byte more":    page + "x",
	} {
		if err := check("pages-1.img", data); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "pages-1.img") {
			t.Errorf("%s: %v, want corrupt naming pages-1.img", what, err)
		}
	}
	if err := check("other.img", "x"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a file the manifest does not list: %v, want corrupt", err)
	}
}
