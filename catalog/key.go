package catalog

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
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
	// A complete file, hard-linked into place: Create fails if another
	// process created the key meanwhile (then its key is the one), and
	// nobody ever sees a short key.
	if err := withHint(atomicfile.Create(path, key, 0o600)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadKey(path)
		}
		return nil, fmt.Errorf("create catalog key: %w", err)
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
