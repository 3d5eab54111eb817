package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/agentapi"
)

// writtenDump is what a checkpoint's dump of one job-node wrote: its
// images' directory and, in a shared catalog, the checkpoint's shared
// directory, which every job-node of the checkpoint writes into.
type writtenDump struct {
	checkpoint string
	dirs       []string
}

// wrote records the directories a dump of ref for checkpoint wrote, for
// Sync. A job-node's newer dump replaces its older record: the coordinator
// syncs a checkpoint right after its commit, and one that never committed
// needs no sync.
func (a *Agent) wrote(ref agentapi.NodeRef, checkpoint string, dirs ...string) {
	if checkpoint == "" {
		return
	}
	dirs = slices.DeleteFunc(slices.Clone(dirs), func(d string) bool { return d == "" })
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.written == nil {
		a.written = map[string]writtenDump{}
	}
	a.written[ref.Job+"/"+ref.Node] = writtenDump{checkpoint: checkpoint, dirs: dirs}
}

// Sync implements agentapi.Agent: it fsyncs every file and directory of
// the images this shim wrote of ref for checkpoint, and the directories
// that hold them. Those directories are the ones the dump wrote (recorded
// by wrote, not taken from the request); in the shim's own store it finds
// them without that record too, after a restart of the shim.
func (a *Agent) Sync(ctx context.Context, ref agentapi.NodeRef, checkpoint string) error {
	if err := checkNames(ref.Job, ref.Node); err != nil {
		return err
	}
	key := ref.Job + "/" + ref.Node
	a.mu.Lock()
	w, ok := a.written[key]
	a.mu.Unlock()
	if !ok || w.checkpoint != checkpoint {
		dir, err := a.storeDir(checkpoint, ref.Node)
		if err != nil || !isDir(dir) {
			return fmt.Errorf("%w: sync %s of %s: this shim has no record of writing those images (it started after the dump?)", agentapi.ErrNotFound, ref.Node, checkpoint)
		}
		w = writtenDump{checkpoint: checkpoint, dirs: []string{dir}}
	}
	start := time.Now()
	files := 0
	for _, d := range w.dirs {
		// In the store, the directories above the images' are the shim's
		// own, made for them: their entries too, up to the store's root.
		top := ""
		if root := a.storeRoot(); a.cfg.ImageDir != "" && strings.HasPrefix(d, root+string(filepath.Separator)) {
			top = root
		}
		n, err := syncTree(ctx, d, top)
		files += n
		if err != nil {
			return fmt.Errorf("sync %s of %s: %w", ref.Node, checkpoint, err)
		}
	}
	a.mu.Lock()
	if cur, ok := a.written[key]; ok && cur.checkpoint == checkpoint {
		delete(a.written, key)
	}
	a.mu.Unlock()
	a.log.Info("checkpoint images synced", "job", ref.Job, "node", ref.Node, "ckpt", checkpoint, "files", files, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func isDir(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.IsDir()
}

// syncTree fsyncs every regular file below root, then every directory
// from the deepest up to root, then root's parent (root's own entry) and
// each directory above it up to top (an ancestor of root; "": the parent
// alone), and returns how many files it synced. It follows no symbolic link and opens nothing
// but regular files and directories, without blocking: what a job's owner
// could have put among the images (their captured files) cannot make a root
// shim read a FIFO or a device.
func syncTree(ctx context.Context, root, top string) (int, error) {
	var dirs []string
	files := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case d.IsDir():
			dirs = append(dirs, p)
		case d.Type().IsRegular():
			if err := fsyncPath(p, false); err != nil {
				return err
			}
			files++
		}
		return nil
	})
	if err != nil {
		return files, err
	}
	slices.Reverse(dirs)
	for p := filepath.Dir(root); ; p = filepath.Dir(p) {
		dirs = append(dirs, p)
		if top == "" || p == top || p == filepath.Dir(p) {
			break
		}
	}
	for _, d := range dirs {
		if err := fsyncPath(d, true); err != nil {
			return files, err
		}
	}
	return files, nil
}

// fsyncPath opens p, a regular file or (dir) a directory, without following
// a symbolic link or blocking, checks it is what it should be, and fsyncs it.
func fsyncPath(p string, dir bool) error {
	flags := unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY
	if dir {
		flags |= unix.O_DIRECTORY
	}
	fd, err := unix.Open(p, flags, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if kind := st.Mode & unix.S_IFMT; (dir && kind != unix.S_IFDIR) || (!dir && kind != unix.S_IFREG) {
		return &fs.PathError{Op: "fsync", Path: p, Err: errors.New("not a regular file or directory (replaced while it was synced?)")}
	}
	if err := unix.Fsync(fd); err != nil {
		return &fs.PathError{Op: "fsync", Path: p, Err: err}
	}
	return nil
}
