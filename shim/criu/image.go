package criu

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Image is a CRIU image file taken apart: its magic header (8 bytes: the
// image class and the image type) and its entries (protobuf messages, each
// stored after its 32-bit little-endian length).
type Image struct {
	Header  [8]byte
	Entries [][]byte
}

// maxEntry bounds one entry: images come from disk, and a length is read
// before the bytes it announces.
const maxEntry = 64 << 20

// ReadImage reads a CRIU image whose entries are plain messages (core,
// pstree, creds, ...; not pagemap or ghost-file payloads).
func ReadImage(path string) (*Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseImage(filepath.Base(path), data)
}

// ParseImage takes apart the bytes of a CRIU image named name (for errors)
// whose entries are plain messages.
func ParseImage(name string, data []byte) (*Image, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("%s: %d bytes, too short for a CRIU image", name, len(data))
	}
	im := &Image{}
	copy(im.Header[:], data)
	r := bytes.NewReader(data[8:])
	for {
		var n uint32
		if err := binary.Read(r, binary.LittleEndian, &n); err == io.EOF {
			return im, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: entry %d: %w", name, len(im.Entries), err)
		}
		if n > maxEntry || int64(n) > int64(r.Len()) {
			return nil, fmt.Errorf("%s: entry %d claims %d bytes, %d are left", name, len(im.Entries), n, r.Len())
		}
		e := make([]byte, n)
		if _, err := io.ReadFull(r, e); err != nil {
			return nil, fmt.Errorf("%s: entry %d: %w", name, len(im.Entries), err)
		}
		im.Entries = append(im.Entries, e)
	}
}

// IsPages says whether name, an image file's path relative to the images
// directory, holds a task's memory pages (pages-<id>.img): the bytes CRIU
// copies into the restored tasks' memory and acts on in no other way.
func IsPages(name string) bool {
	base, ok := strings.CutPrefix(name, "pages-")
	if !ok || !strings.HasSuffix(base, ".img") {
		return false
	}
	id := strings.TrimSuffix(base, ".img")
	if id == "" {
		return false
	}
	for _, c := range id {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Write writes the image to path.
func (im *Image) Write(path string) error {
	var b bytes.Buffer
	b.Write(im.Header[:])
	for _, e := range im.Entries {
		_ = binary.Write(&b, binary.LittleEndian, uint32(len(e)))
		b.Write(e)
	}
	return os.WriteFile(path, b.Bytes(), 0o600)
}
