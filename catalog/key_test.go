package catalog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "catalog.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != KeySize || bytes.Equal(k1, make([]byte, KeySize)) {
		t.Fatalf("key = %x", k1)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", st.Mode(), err)
	}
	dst, err := os.Stat(dir)
	if err != nil || dst.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode = %v, %v; want 0700", dst.Mode(), err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second load = %x, %v; want the same key", k2, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary files left in %s: %v", dir, ents)
	}

	tests := []struct {
		name    string
		mode    os.FileMode
		content []byte
		wantErr string
	}{
		{"world readable", 0o644, k1, "chmod 600"},
		{"group readable", 0o640, k1, "chmod 600"},
		{"short", 0o600, k1[:10], "is 10 bytes, want 32"},
		{"empty", 0o600, nil, "is 0 bytes, want 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "catalog.key")
			if err := os.WriteFile(p, tt.content, tt.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tt.mode) // not subject to umask
			_, err := LoadOrCreateKey(p)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), p) {
				t.Fatalf("LoadOrCreateKey = %v, want an error naming %s and saying %q", err, p, tt.wantErr)
			}
			// The refused key is left as it was.
			if got, _ := os.ReadFile(p); !bytes.Equal(got, tt.content) {
				t.Fatal("refused key file was modified")
			}
		})
	}
}

func TestOpenRejectsShortKey(t *testing.T) {
	if _, err := Open(t.TempDir(), []byte("short")); err == nil {
		t.Fatal("Open accepted a 5-byte key")
	}
}
