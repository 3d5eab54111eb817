// Package appfiles keeps the files an application writes consistent with its
// checkpoints.
//
// CRIU restores a task's open regular files by path and refuses one whose size
// changed since the dump: a program that writes its own files (a log, results,
// a trajectory, restart files) cannot be restored from a checkpoint once it ran
// past it, and restoring it without its files as they were would give other
// results. So at every checkpoint, while the job-node is frozen, Capture saves
// every regular file a task of the job-node holds open for writing, and every
// file below the paths the user named (--keep), into the job-node's images;
// before CRIU restores, Restore puts each back as it was at that checkpoint.
//
// A file that only grew since this shim's previous capture of it (same inode,
// not shorter, the bytes before its old end unchanged) is captured by its
// length: restoring it cuts it back. Any other file is captured whole (a
// reflink where the file system can, else a copy).
//
// Every path operation on the user's files runs on a thread with the job
// owner's file-system identity and groups and without the capabilities that
// bypass file permissions (AsUser): the shim, root, opens, creates and renames
// nothing the owner could not. Reading and writing the contents of files so
// opened, and the images, is done as root.
package appfiles

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DirName is the directory inside a job-node's images that holds its
// captured files: index.json and the captured contents.
const DirName = "torpor-app"

const indexName = "index.json"

// TailLen is how much of a file before its end a capture hashes: the proof,
// at the next capture and at a restore, that the bytes there are unchanged.
const TailLen = 64 << 10

// DefaultMax bounds what one job-node's capture may copy (--keep-max).
const DefaultMax = 1 << 30

// Kind says how a file was captured.
type Kind string

const (
	// KindContent: the whole content is in the images.
	KindContent Kind = "content"
	// KindLength: only the length; the file only grew since a capture that
	// saw the same bytes up to its old end, and a restore cuts it back.
	KindLength Kind = "length"
	// KindElsewhere: another job-node of the checkpoint holds the file too
	// and captured it (Owner); this one leaves it to that one, at capture
	// and at restore.
	KindElsewhere Kind = "elsewhere"
)

// Entry is one captured file.
type Entry struct {
	Path  string `json:"path"`
	Kind  Kind   `json:"kind"`
	Size  int64  `json:"size"`
	Mode  uint32 `json:"mode"` // permission bits
	Mtime int64  `json:"mtime_ns"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	// Tail is the SHA-256 of the TailLen bytes before Size (all of them in a
	// smaller file).
	Tail string `json:"tail_sha256"`
	// Data names the file below DirName holding the content (KindContent).
	Data string `json:"data,omitempty"`
	// Keep is the --keep path the file was found under; empty for a file
	// found open for writing.
	Keep string `json:"keep,omitempty"`
	// Owner is the job-node that captured the file (KindElsewhere).
	Owner string `json:"owner,omitempty"`
}

// Index lists a job-node's captured files.
type Index struct {
	Version int `json:"version"`
	// Keep are the --keep paths, as given.
	Keep []string `json:"keep,omitempty"`
	// KeptFiles lists, for every --keep directory, the regular files below it
	// at the capture (relative paths): a restore moves others aside.
	KeptFiles map[string][]string `json:"kept_files,omitempty"`
	Entries   []Entry             `json:"entries"`
	// Bytes is what the capture copied.
	Bytes int64 `json:"bytes"`
}

// ReadIndex reads the index in a job-node's images; a checkpoint without one
// (none of its files was captured, or it predates capturing) is an empty
// index.
func ReadIndex(images string) (*Index, error) {
	data, err := os.ReadFile(filepath.Join(images, DirName, indexName))
	if errors.Is(err, os.ErrNotExist) {
		return &Index{Version: 1}, nil
	}
	if err != nil {
		return nil, err
	}
	var ix Index
	if err := json.Unmarshal(data, &ix); err != nil {
		return nil, fmt.Errorf("captured files: %s: %w", indexName, err)
	}
	if ix.Version != 1 {
		return nil, fmt.Errorf("captured files: index format %d, this torpor reads 1", ix.Version)
	}
	for _, e := range ix.Entries {
		if !filepath.IsAbs(e.Path) || filepath.Clean(e.Path) != e.Path {
			return nil, fmt.Errorf("captured files: path %q is not absolute and clean", e.Path)
		}
		if e.Kind == KindContent && !filepath.IsLocal(e.Data) {
			return nil, fmt.Errorf("captured files: data %q of %s leaves %s", e.Data, e.Path, DirName)
		}
	}
	return &ix, nil
}

// find returns the entry for path, or nil.
func (ix *Index) find(path string) *Entry {
	if ix == nil {
		return nil
	}
	for i := range ix.Entries {
		if ix.Entries[i].Path == path {
			return &ix.Entries[i]
		}
	}
	return nil
}

// tailHash hashes the TailLen bytes of f before size.
func tailHash(f *os.File, size int64) (string, error) {
	off := max(size-TailLen, 0)
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, size-off)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// statOf is what a capture records of an open file.
func statOf(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(int(f.Fd()), &st)
	return st, err
}

func mtimeOf(st *unix.Stat_t) int64 {
	return time.Unix(st.Mtim.Unix()).UnixNano()
}

// under reports whether path is dir or below it.
func under(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}
