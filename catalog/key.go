package catalog

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeySize is the size of the manifest signing key in bytes.
const KeySize = 32

// LoadOrCreateKey returns the HMAC key kept at path (normally <state dir>/catalog.key),
// creating it on first use: 32 random bytes, file mode 0600, parent directory 0700.
// An existing key file readable or writable by anyone but its owner, or of the wrong
// size, is refused: checkpoints signed with a leaked key prove nothing.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := loadKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, ioErr("create key directory", dir, err)
	}
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate catalog key: %w", err)
	}
	// Write a complete temporary file, then hard-link it into place: link fails if
	// another process created the key meanwhile, and nobody ever sees a short key.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, ioErr("create catalog key", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(key)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, ioErr("write catalog key", tmp, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadKey(path)
		}
		return nil, ioErr("install catalog key", path, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return key, nil
}

func loadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, ioErr("open catalog key", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, ioErr("stat catalog key", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("catalog key %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("catalog key %s has mode %#o: it must be accessible by its owner only; run `chmod 600 %s` (and consider the key leaked if others could read it)", path, perm, path)
	}
	if st.Size() != KeySize {
		return nil, fmt.Errorf("catalog key %s is %d bytes, want %d: the file is damaged; restore it from a backup, or remove it to create a new key (existing checkpoints then fail verification)", path, st.Size(), KeySize)
	}
	key := make([]byte, KeySize)
	if _, err := f.ReadAt(key, 0); err != nil {
		return nil, ioErr("read catalog key", path, err)
	}
	return key, nil
}
