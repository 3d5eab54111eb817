package appfiles

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CaptureOptions says what to capture.
type CaptureOptions struct {
	// Pids are the job-node's tasks (frozen): the files they hold open for
	// writing are captured.
	Pids []int
	// Keep are paths the user named (--keep): a file, or a directory whose
	// every regular file is captured (symbolic links are not followed).
	Keep []string
	// Exclude are directories whose files are not the application's (the
	// shim's run directory: output, shared memory, pmixd's files).
	Exclude []string
	// User owns the files; nil is root.
	User *User
	// Images is the job-node's images directory; the capture goes to
	// Images/DirName.
	Images string
	// Prev is this shim's previous capture of the job-node, or nil: a file
	// that only grew since is captured by its length.
	Prev *Index
	// Max bounds the bytes copied; 0 is DefaultMax.
	Max int64
	// Shared is a directory every job-node of the checkpoint shares, and
	// Node this job-node's name: a file is captured by the job-node that
	// claims it there first (the same path, device, inode, size and
	// modification time), once per checkpoint however many hold it. Empty:
	// every file is captured here.
	Shared, Node string
}

// ErrTooLarge is wrapped by a capture that would copy more than Max bytes.
var ErrTooLarge = errors.New("captured files exceed the limit")

// found is a file to capture, opened for reading as the owner.
type found struct {
	path string
	keep string
	f    *os.File
}

// Capture saves the application's files into o.Images/DirName and returns
// the index it wrote there. The job-node must be frozen.
func Capture(o CaptureOptions) (*Index, error) {
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	ix := &Index{Version: 1, Keep: o.Keep}
	pids := ownedBy(o.Pids, o.User)
	var files []found
	defer func() {
		for _, f := range files {
			f.f.Close()
		}
	}()
	err := AsUser(o.User, func() error {
		var err error
		files, err = openWritten(pids, o.Exclude)
		if err != nil {
			return err
		}
		for _, k := range o.Keep {
			kept, names, err := openKept(k, o.Exclude)
			if err != nil {
				return err
			}
			files = append(files, kept...)
			if names != nil {
				if ix.KeptFiles == nil {
					ix.KeptFiles = map[string][]string{}
				}
				ix.KeptFiles[k] = names
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(o.Images, DirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	seen := map[[2]uint64]bool{}
	for _, fd := range files {
		st, err := statOf(fd.f)
		if err != nil {
			return nil, fmt.Errorf("capture %s: %w", fd.path, err)
		}
		id := [2]uint64{st.Dev, st.Ino}
		if seen[id] {
			continue // open twice, or open and below a --keep directory
		}
		seen[id] = true
		e := Entry{Path: fd.path, Keep: fd.keep, Size: st.Size, Mode: st.Mode & 0o7777, Mtime: mtimeOf(&st), Dev: st.Dev, Ino: st.Ino}
		if e.Tail, err = tailHash(fd.f, e.Size); err != nil {
			return nil, fmt.Errorf("capture %s: %w", fd.path, err)
		}
		if o.Shared != "" {
			owner, err := claim(o.Shared, o.Node, &e)
			if err != nil {
				return nil, fmt.Errorf("capture %s: %w", fd.path, err)
			}
			if owner != o.Node {
				e.Kind, e.Owner = KindElsewhere, owner
				ix.Entries = append(ix.Entries, e)
				continue
			}
		}
		if onlyGrew(fd.f, &e, o.Prev.find(fd.path)) {
			e.Kind = KindLength
		} else {
			if ix.Bytes+e.Size > o.Max {
				return nil, fmt.Errorf("%w: %s would make this job-node's capture %d bytes, over --keep-max %d: raise --keep-max, or leave it out of --keep", ErrTooLarge, fd.path, ix.Bytes+e.Size, o.Max)
			}
			e.Kind, e.Data = KindContent, strconv.Itoa(len(ix.Entries))+".data"
			if err := copyOut(fd.f, filepath.Join(dir, e.Data), e.Size); err != nil {
				return nil, fmt.Errorf("capture %s: %w", fd.path, err)
			}
			ix.Bytes += e.Size
		}
		ix.Entries = append(ix.Entries, e)
	}
	data, err := json.MarshalIndent(ix, "", " ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, indexName), data, 0o600); err != nil {
		return nil, err
	}
	return ix, nil
}

// claim makes node the job-node that captures e, unless another job-node of
// the checkpoint did first, and returns the one that does. The claim is a
// file named after the file's identity, created whole by link(2).
func claim(shared, node string, e *Entry) (string, error) {
	id := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%d\x00%d\x00%d", e.Path, e.Dev, e.Ino, e.Size, e.Mtime)))
	key := filepath.Join(shared, hex.EncodeToString(id[:]))
	tmp := key + "." + node + ".tmp"
	if err := os.WriteFile(tmp, []byte(node), 0o600); err != nil {
		return "", err
	}
	defer os.Remove(tmp)
	err := os.Link(tmp, key)
	if err == nil {
		return node, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	owner, err := os.ReadFile(key)
	if err != nil {
		return "", err
	}
	return string(owner), nil
}

// onlyGrew reports whether f (stat in e) is prev's file grown: the same
// inode, not shorter, and the bytes before prev's end unchanged.
func onlyGrew(f *os.File, e *Entry, prev *Entry) bool {
	if prev == nil || prev.Dev != e.Dev || prev.Ino != e.Ino || e.Size < prev.Size {
		return false
	}
	if e.Size == prev.Size {
		return e.Tail == prev.Tail
	}
	h, err := tailHash(f, prev.Size)
	return err == nil && h == prev.Tail
}

// copyOut copies size bytes of f into a new file dst: a reflink where the
// file systems allow it, else a copy.
func copyOut(f *os.File, dst string, size int64) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := copyContent(out, f, size); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyContent makes dst's content the first size bytes of src.
func copyContent(dst, src *os.File, size int64) error {
	if err := unix.IoctlFileCloneRange(int(dst.Fd()), &unix.FileCloneRange{Src_fd: int64(src.Fd()), Src_length: uint64(size)}); err == nil {
		return dst.Truncate(size)
	}
	if _, err := dst.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := dst.Truncate(0); err != nil {
		return err
	}
	n, err := io.Copy(dst, io.NewSectionReader(src, 0, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("copied %d bytes, want %d", n, size)
	}
	return nil
}

// openWritten opens, for reading, every regular file that one of pids holds
// open for writing, by its /proc/PID/fd link: the very file the task has,
// whatever its path now is. It runs as the owner: a file the owner may not
// read is an error naming it.
func openWritten(pids []int, exclude []string) ([]found, error) {
	var out []found
	for _, pid := range pids {
		fdDir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(fdDir)
		if errors.Is(err, fs.ErrNotExist) {
			continue // exited
		}
		if err != nil {
			return out, err
		}
		for _, ent := range ents {
			fd := ent.Name()
			if !writable(pid, fd) {
				continue
			}
			link := filepath.Join(fdDir, fd)
			path, err := os.Readlink(link)
			if err != nil || !filepath.IsAbs(path) || strings.HasSuffix(path, " (deleted)") {
				continue // a socket, pipe, anonymous inode; or deleted (CRIU saves those)
			}
			if slices.ContainsFunc(exclude, func(d string) bool { return under(path, d) }) || special(path) {
				continue
			}
			f, err := os.OpenFile(link, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
			if err != nil {
				return out, fmt.Errorf("capture %s (open by task %d): %w", path, pid, err)
			}
			st, err := f.Stat()
			if err != nil || !st.Mode().IsRegular() {
				f.Close()
				continue
			}
			out = append(out, found{path: path, f: f})
		}
	}
	return out, nil
}

// ownedBy keeps the tasks that run as u (all for root's job): the others,
// the sandbox's init, are torpor's own, and their files its own.
func ownedBy(pids []int, u *User) []int {
	if u == nil || u.UID == 0 {
		return pids
	}
	var out []int
	for _, pid := range pids {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d", pid), &st); err == nil && int(st.Uid) == u.UID {
			out = append(out, pid)
		}
	}
	return out
}

// special are file systems whose files are not data: kernel interfaces.
func special(path string) bool {
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		if under(path, d) {
			return true
		}
	}
	return false
}

// writable reports whether a task's fd was opened for writing.
func writable(pid int, fd string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && flags&unix.O_ACCMODE != unix.O_RDONLY
		}
	}
	return false
}

// openKept opens the file at a --keep path, or every regular file below the
// directory there (names: their paths relative to it, sorted). It runs as
// the owner and follows no symbolic link: neither a link at keep nor one
// below it.
func openKept(keep string, exclude []string) (files []found, names []string, err error) {
	if !filepath.IsAbs(keep) {
		return nil, nil, fmt.Errorf("--keep %s: not an absolute path", keep)
	}
	st, err := os.Lstat(keep)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil // nothing there yet: nothing to keep
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--keep %s: %w", keep, err)
	}
	if st.Mode().IsRegular() {
		f, err := openNoFollow(keep)
		if err != nil {
			return nil, nil, fmt.Errorf("--keep %s: %w", keep, err)
		}
		return []found{{path: keep, keep: keep, f: f}}, nil, nil
	}
	if !st.IsDir() {
		return nil, nil, fmt.Errorf("--keep %s: neither a regular file nor a directory", keep)
	}
	names = []string{}
	err = filepath.WalkDir(keep, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && slices.ContainsFunc(exclude, func(x string) bool { return under(p, x) }) {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() || isAside(d.Name()) {
			return nil
		}
		f, err := openNoFollow(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(keep, p)
		names = append(names, rel)
		files = append(files, found{path: p, keep: keep, f: f})
		return nil
	})
	if err != nil {
		for _, f := range files {
			f.f.Close()
		}
		return nil, nil, fmt.Errorf("--keep %s: %w", keep, err)
	}
	slices.Sort(names)
	return files, names, nil
}

func openNoFollow(p string) (*os.File, error) {
	return os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
}
