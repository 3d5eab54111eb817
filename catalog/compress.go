package catalog

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Codecs an image file may be stored with. A StreamHasher given a codec
// stores each file it follows compressed, as <name><ext> (CodecExt), and
// the node manifest (format 3) records for it the codec, the size and
// BLAKE3 of the compressed bytes (what is stored, what Verify checks) and
// the raw size, which NodeImages.Expand enforces: a stored file never
// expands to more (or less) than the signed manifest says.
const (
	CodecNone = "none"
	CodecLZ4  = "lz4"
	CodecZstd = "zstd"
)

// ErrUnknownCodec: a codec name torpor does not know.
var ErrUnknownCodec = errors.New("unknown compression codec")

// ParseCodec checks a codec's name as a user gives it ("", "none", "lz4",
// "zstd") and returns it as the catalog records it: "" for none.
func ParseCodec(s string) (string, error) {
	switch s {
	case "", CodecNone:
		return "", nil
	case CodecLZ4, CodecZstd:
		return s, nil
	}
	return "", fmt.Errorf("%w %q: choose none, lz4 or zstd", ErrUnknownCodec, s)
}

// CodecExt is the suffix a file stored with codec gets ("" for none).
func CodecExt(codec string) string {
	switch codec {
	case CodecLZ4:
		return ".lz4"
	case CodecZstd:
		return ".zst"
	}
	return ""
}

// zstdMaxWindow bounds the memory a zstd frame may make the decoder hold
// (the encoder below uses a 4 MiB window, as zstd's fastest level does).
const zstdMaxWindow = 32 << 20

func newEncoder(codec string, w io.Writer) (io.WriteCloser, error) {
	switch codec {
	case CodecLZ4:
		zw := lz4.NewWriter(w)
		// Blocks of 4 MiB, on one goroutine (on every core it was no faster
		// beside CRIU on 2 cores); the frame's content checksum is off: the
		// BLAKE3 of the stored bytes covers them.
		if err := zw.Apply(lz4.BlockSizeOption(lz4.Block4Mb), lz4.ChecksumOption(false)); err != nil {
			return nil, err
		}
		return zw, nil
	case CodecZstd:
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(4<<20), zstd.WithEncoderCRC(false))
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownCodec, codec)
}

// newDecoder reads codec's stream from r; close releases it.
func newDecoder(codec string, r io.Reader) (dec io.Reader, close func(), err error) {
	switch codec {
	case CodecLZ4:
		return lz4.NewReader(r), func() {}, nil
	case CodecZstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderMaxMemory(zstdMaxWindow), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return d, d.Close, nil
	}
	return nil, nil, fmt.Errorf("%w %q", ErrUnknownCodec, codec)
}

// compressedOut is a followed file's compressed copy being written: raw
// bytes go into enc, which writes the compressed ones to f through the hash.
type compressedOut struct {
	codec string
	path  string
	f     *os.File
	h     hash.Hash
	n     int64 // compressed bytes written
	enc   io.WriteCloser
}

func createCompressed(p, codec string) (*compressedOut, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, ioErr("create", p, err)
	}
	c := &compressedOut{codec: codec, path: p, f: f, h: newBLAKE3()}
	if c.enc, err = newEncoder(codec, (*compressedSink)(c)); err != nil {
		f.Close()
		os.Remove(p)
		return nil, err
	}
	return c, nil
}

// compressedSink is where the encoder writes: the file and the hash.
type compressedSink compressedOut

func (s *compressedSink) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.h.Write(p[:n])
	s.n += int64(n)
	return n, err
}

// finish flushes the encoder and closes the file; raw is how many bytes
// went in. The sum is of the compressed file as it is now.
func (c *compressedOut) finish(raw int64) (FileSum, error) {
	err := c.enc.Close()
	var info os.FileInfo
	if err == nil {
		info, err = c.f.Stat()
	}
	if cerr := c.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return FileSum{}, ioErr("compress into", c.path, err)
	}
	sys, ok := info.Sys().(*syscall.Stat_t)
	if !ok || info.Size() != c.n {
		return FileSum{}, fmt.Errorf("%s: %d bytes on disk, %d written", c.path, info.Size(), c.n)
	}
	return FileSum{Size: c.n, Digest: hex.EncodeToString(c.h.Sum(nil)), Codec: c.codec, RawSize: raw,
		ino: sys.Ino, mtime: sys.Mtim, ctime: sys.Ctim}, nil
}

// abort closes and removes an unfinished compressed copy.
func (c *compressedOut) abort() {
	c.enc.Close()
	c.f.Close()
	os.Remove(c.path)
}

// Compressed lists the files the node manifest records as compressed, in
// its order.
func (n *NodeImages) Compressed() []FileEntry {
	var out []FileEntry
	for _, f := range n.order {
		if f.Codec != "" {
			out = append(out, f)
		}
	}
	return out
}

// IsCompressed says whether the listed file name is stored compressed.
func (n *NodeImages) IsCompressed(name string) bool { return n.files[name].Codec != "" }

// RawName is the name a compressed file's raw form has (its path without
// the codec's suffix).
func (f FileEntry) RawName() string { return strings.TrimSuffix(f.Path, CodecExt(f.Codec)) }

// Expand writes the raw form of the listed compressed file f into dst (a
// directory only root can write to, which the caller removes), as
// f.RawName(), verifying as it reads: the stored bytes are hashed as they
// are decompressed, once, and must match the node manifest, and the raw
// form must be exactly f.RawSize bytes (decompression stops one byte past
// it: a forged or corrupted file cannot fill the disk). On any failure the
// raw file is removed; a mismatch is a *CorruptError naming the stored file.
func (n *NodeImages) Expand(ctx context.Context, f FileEntry, dst *os.Root) (err error) {
	if n.files[f.Path] != f || f.Codec == "" {
		return n.corrupt(f.Path, "is not a compressed file of the node manifest", nil)
	}
	in, err := n.root.Open(f.Path)
	if err != nil {
		return ioErr("open", filepath.Join(n.dir, f.Path), err)
	}
	defer in.Close()
	raw := f.RawName()
	if path.Dir(raw) != "." {
		if err := dst.MkdirAll(path.Dir(raw), 0o700); err != nil {
			return ioErr("create", filepath.Join(dst.Name(), path.Dir(raw)), err)
		}
	}
	out, err := dst.OpenFile(raw, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return ioErr("create", filepath.Join(dst.Name(), raw), err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = ioErr("write", filepath.Join(dst.Name(), raw), cerr)
		}
		if err != nil {
			dst.Remove(raw)
		}
	}()
	h := n.dg.new()
	stored := &countingReader{r: ctxReader{ctx, in}}
	// The decoders read in small pieces; the stored file is read (and
	// hashed) in large ones.
	in2 := bufio.NewReaderSize(io.TeeReader(stored, h), 1<<20)
	dec, closeDec, err := newDecoder(f.Codec, in2)
	if err != nil {
		return err
	}
	defer closeDec()
	buf := make([]byte, 1<<20)
	w := &recordingWriter{w: out}
	got, err := io.CopyBuffer(w, io.LimitReader(dec, f.RawSize+1), buf)
	if ctx.Err() != nil {
		return fmt.Errorf("expand %s: %w", filepath.Join(n.dir, f.Path), ctx.Err())
	}
	if w.err != nil {
		return ioErr("write", out.Name(), w.err)
	}
	// Whatever the decoder left unread is hashed too: the verdict is on
	// every stored byte.
	if _, derr := io.CopyBuffer(io.Discard, in2, buf); derr != nil && err == nil {
		err = derr
	}
	if stored.n != f.Size {
		return n.corrupt(f.Path, fmt.Sprintf("size changed to %d bytes during verification, the manifest records %d", stored.n, f.Size), nil)
	}
	if err := n.matches(f, hex.EncodeToString(h.Sum(nil))); err != nil {
		return err
	}
	switch {
	case err != nil:
		return n.corrupt(f.Path, "does not decompress ("+f.Codec+")", err)
	case got > f.RawSize:
		return n.corrupt(f.Path, fmt.Sprintf("decompresses to more than the %d bytes the manifest records", f.RawSize), nil)
	case got < f.RawSize:
		return n.corrupt(f.Path, fmt.Sprintf("decompresses to %d bytes, the manifest records %d", got, f.RawSize), nil)
	}
	return nil
}

// recordingWriter keeps its writer's error apart from the reader's.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

// checkCodec checks a node manifest entry's codec fields: only format 3
// has them; a compressed file is named for its codec and has a raw name.
func checkCodec(format int, f FileEntry) error {
	if f.Codec == "" {
		if f.RawSize != 0 {
			return errors.New("a raw size without a codec")
		}
		return nil
	}
	if format < nodeFormatCodecs {
		return fmt.Errorf("a codec in a format %d node manifest", format)
	}
	if c, err := ParseCodec(f.Codec); err != nil || c == "" {
		return fmt.Errorf("%w %q", ErrUnknownCodec, f.Codec)
	}
	if raw := f.RawName(); raw == f.Path || path.Base(raw) == "" || path.Base(raw) == "." {
		return fmt.Errorf("a %s file must be named <image>%s", f.Codec, CodecExt(f.Codec))
	}
	if f.RawSize < 0 {
		return errors.New("a negative raw size")
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
