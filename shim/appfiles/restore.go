package appfiles

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// asideMark is in the name of a file a restore moved aside: a file below a
// --keep directory that did not exist at the checkpoint restored. It is the
// user's data, never deleted, and never captured or moved again.
const asideMark = ".torpor-after-"

// tmpMark is in the name of a file being put back.
const tmpMark = ".torpor-restore-"

func isAside(name string) bool {
	return strings.Contains(name, asideMark) || strings.Contains(name, tmpMark)
}

// RestoreOptions says where the captured files are and whose they are.
type RestoreOptions struct {
	Images string // the job-node's images
	User   *User  // the files' owner; nil is root
	// Seq names the checkpoint in the names of files moved aside
	// (NAME.torpor-after-<Seq>).
	Seq string
}

// Restore puts every captured file back as it was at the checkpoint, before
// CRIU restores the tasks that hold them: a file captured whole is replaced
// atomically by its capture (with its mode and modification time), one
// captured by its length is cut back to it after the bytes before that
// length are found unchanged. Files below a --keep directory that did not
// exist at the checkpoint are moved aside (NAME.torpor-after-<seq>) and
// returned. An error names the file that could not be put back and why.
func Restore(o RestoreOptions) (ix *Index, moved []string, err error) {
	ix, err = ReadIndex(o.Images)
	if err != nil || (len(ix.Entries) == 0 && len(ix.Keep) == 0) {
		return ix, nil, err
	}
	// The captures are root's: open them here, use them as the owner.
	data := make([]*os.File, len(ix.Entries))
	defer func() {
		for _, f := range data {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i, e := range ix.Entries {
		if e.Kind != KindContent {
			continue
		}
		if data[i], err = os.Open(filepath.Join(o.Images, DirName, e.Data)); err != nil {
			return nil, nil, fmt.Errorf("captured %s: %w", e.Path, err)
		}
	}
	err = AsUser(o.User, func() error {
		for i, e := range ix.Entries {
			var err error
			switch e.Kind {
			case KindLength:
				err = cutBack(e)
			case KindContent:
				err = replace(e, data[i])
			case KindElsewhere:
				// The job-node that captured it puts it back.
			default:
				err = fmt.Errorf("unknown capture kind %q", e.Kind)
			}
			if err != nil {
				return err
			}
		}
		for _, k := range ix.Keep {
			m, err := moveAside(ix, k, o.Seq)
			moved = append(moved, m...)
			if err != nil {
				return err
			}
		}
		return nil
	})
	return ix, moved, err
}

// cutBack truncates a file captured by its length back to that length.
func cutBack(e Entry) error {
	f, err := os.OpenFile(e.Path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is gone since the checkpoint, which kept only its length (%d bytes): put the file back, or restart from a checkpoint that holds it whole (`torpor ls`)", e.Path, e.Size)
	}
	if err != nil {
		return fmt.Errorf("put back %s: %w", e.Path, err)
	}
	defer f.Close()
	st, err := statOf(f)
	if err != nil {
		return fmt.Errorf("put back %s: %w", e.Path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is no longer a regular file", e.Path)
	}
	if st.Size < e.Size {
		return fmt.Errorf("%s is %d bytes, shorter than the %d it had at the checkpoint, which kept only its length: it was rewritten since; restart from a checkpoint that holds it whole (`torpor ls`)", e.Path, st.Size, e.Size)
	}
	if h, err := tailHash(f, e.Size); err != nil {
		return fmt.Errorf("put back %s: %w", e.Path, err)
	} else if h != e.Tail {
		return fmt.Errorf("%s changed before byte %d since the checkpoint, which kept only its length: it was rewritten since; restart from a checkpoint that holds it whole (`torpor ls`)", e.Path, e.Size)
	}
	if err := f.Truncate(e.Size); err != nil {
		return fmt.Errorf("put back %s: %w", e.Path, err)
	}
	return setTimes(f, e)
}

// replace puts a file captured whole back: a new file beside it, filled
// from the capture, renamed over it.
func replace(e Entry, data *os.File) error {
	dir, base := filepath.Split(e.Path)
	d, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s cannot be put back: its directory %s does not exist on this host (is the file system that held it mounted here?)", e.Path, dir)
	}
	if err != nil {
		return fmt.Errorf("put back %s: %w", e.Path, err)
	}
	defer d.Close()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := base + tmpMark + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(int(d.Fd()), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("put back %s: create %s: %w", e.Path, tmp, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir, tmp))
	err = copyContent(f, data, e.Size)
	if err == nil {
		err = f.Chmod(fs.FileMode(e.Mode & 0o777))
	}
	if err == nil {
		err = setTimes(f, e)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(int(d.Fd()), tmp, int(d.Fd()), base)
	}
	if err != nil {
		_ = unix.Unlinkat(int(d.Fd()), tmp, 0)
		return fmt.Errorf("put back %s: %w", e.Path, err)
	}
	return nil
}

func setTimes(f *os.File, e Entry) error {
	ts := unix.NsecToTimespec(e.Mtime)
	return unix.UtimesNanoAt(int(f.Fd()), "", []unix.Timespec{ts, ts}, unix.AT_EMPTY_PATH)
}

// moveAside renames what is at a --keep path and was not there at the
// checkpoint: files below a kept directory that its list lacks, or the kept
// file itself when it did not exist then.
func moveAside(ix *Index, keep, seq string) ([]string, error) {
	names, isDir := ix.KeptFiles[keep]
	if !isDir {
		if ix.find(keep) != nil {
			return nil, nil
		}
		st, err := os.Lstat(keep)
		if err != nil || !st.Mode().IsRegular() {
			return nil, nil
		}
		to, err := renameAside(keep, seq)
		if err != nil {
			return nil, fmt.Errorf("move %s aside: %w", keep, err)
		}
		if to == "" {
			return nil, nil
		}
		return []string{to}, nil
	}
	var moved []string
	err := filepath.WalkDir(keep, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || isAside(d.Name()) {
			return nil
		}
		rel, _ := filepath.Rel(keep, p)
		if _, ok := slices.BinarySearch(names, rel); ok {
			return nil
		}
		to, err := renameAside(p, seq)
		if err != nil {
			return err
		}
		if to != "" {
			moved = append(moved, to)
		}
		return nil
	})
	if err != nil {
		return moved, fmt.Errorf("--keep %s: move files that came after the checkpoint aside: %w", keep, err)
	}
	return moved, nil
}

// renameAside renames p to p.torpor-after-<seq>, or, when an earlier restart
// from the same checkpoint left a file of that name, to the first free
// p.torpor-after-<seq>.<n>: a file moved aside is never replaced. p gone
// already is no error and no new name (""): every job-node of a job walks
// the same --keep directories, and another one moved it first.
func renameAside(p, seq string) (string, error) {
	to := p + asideMark + seq
	for n := 2; ; n++ {
		err := unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
		if err == nil {
			return to, nil
		}
		if errors.Is(err, unix.ENOENT) {
			return "", nil
		}
		if !errors.Is(err, unix.EEXIST) || n > 1000 {
			return "", err
		}
		to = fmt.Sprintf("%s%s%s.%d", p, asideMark, seq, n)
	}
}
