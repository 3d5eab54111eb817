package criu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// KerndatCache is where CRIU, run as root, looks for what it learnt about
// the running kernel (its "kerndat": features, the vDSO's layout, the CPU's
// xsave layout and more). CRIU fills the cache in only when its directory is
// a tmpfs, so that a reboot clears it; elsewhere every CRIU run probes the
// kernel again first. On the machine the benchmarks run on, /run is part of
// the root file system (ext4), and that probe took 35-40 ms of every dump,
// restore and lazy-pages daemon (CRIU's log: about 39 ms from its start to
// "Dumping processes"; `criu check` 50 ms without the cache, 20 ms with it).
const KerndatCache = "/run/criu.kdat"

// kerndatLockPath serializes WarmKerndat between the shims of one machine.
const kerndatLockPath = "/run/torpor/criu-kdat.lock"

// WarmKerndat gives CRIU its kernel cache where CRIU would not keep one.
// When the cache's directory is a tmpfs, or a non-empty cache file is there
// already, it does nothing and returns false: CRIU looks after its cache
// itself. Otherwise it has the criu at criuPath fill a cache in a mount
// namespace of its own whose /run is a tmpfs, and bind-mounts that file,
// read-only and itself on a tmpfs, over KerndatCache (an empty placeholder
// file is created for it): the cache then lasts exactly as long as CRIU's
// own on a tmpfs would, until the machine restarts, and CRIU never writes
// it. It returns true when it mounted the cache.
//
// A failure is never fatal to the caller: CRIU then probes the kernel at
// every run, as it did.
func WarmKerndat(ctx context.Context, criuPath string) (bool, error) {
	dir := filepath.Dir(KerndatCache)
	if tmpfs, err := isTmpfs(dir); err != nil || tmpfs {
		return false, err
	}
	unlock, err := lockMachine(ctx, kerndatLockPath)
	if err != nil {
		return false, fmt.Errorf("CRIU's kernel cache: %w", err)
	}
	defer unlock()
	if present, err := kerndatPresent(KerndatCache); err != nil || present {
		return false, err
	}
	data, err := probeKerndat(ctx, criuPath)
	if err != nil {
		return false, err
	}
	if err := mountKerndat(KerndatCache, data); err != nil {
		return false, err
	}
	return true, nil
}

// isTmpfs says whether path lies on a tmpfs.
func isTmpfs(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("CRIU's kernel cache: statfs %s: %w", path, err)
	}
	return st.Type == unix.TMPFS_MAGIC, nil
}

// kerndatPresent says whether path holds a cache already: a non-empty
// regular file (a mounted one, or one somebody put there). An empty file is
// a placeholder whose mount went with a reboot.
func kerndatPresent(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("CRIU's kernel cache: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("CRIU's kernel cache: %s is not a regular file (%s); left alone, CRIU probes the kernel at every run", path, fi.Mode().Type())
	}
	return fi.Size() > 0, nil
}

// probeKerndat runs `criu check` in a mount namespace of its own, with a
// tmpfs on the cache's directory, and returns the cache CRIU left there.
// The namespace is a thread's of its own (nsrun.OnThread), which the child
// CRIU inherits and which dies with the thread.
func probeKerndat(ctx context.Context, criuPath string) ([]byte, error) {
	var data []byte
	err := nsrun.OnThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare the mount namespace: %w", err)
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make the mounts private: %w", err)
		}
		dir := filepath.Dir(KerndatCache)
		if err := unix.Mount("torpor-kdat", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m,mode=0755"); err != nil {
			return fmt.Errorf("mount a tmpfs on %s: %w", dir, err)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		// `criu check` fails when a feature it checks is missing; its
		// cache is written before, whatever the verdict.
		out, runErr := exec.CommandContext(cctx, criuPath, "check").CombinedOutput()
		var err error
		if data, err = os.ReadFile(KerndatCache); err != nil || len(data) == 0 {
			return fmt.Errorf("`%s check` left no cache (%v; its exit: %v; its output: %s)", criuPath, err, runErr, bytes.TrimSpace(out))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("CRIU's kernel cache: %w", err)
	}
	return data, nil
}

// mountKerndat puts data, on a tmpfs of its own, read-only at path (which
// must be absent or an empty regular file). Nothing else stays: the tmpfs's
// directory is unmounted and removed once the file is bound.
func mountKerndat(path string, data []byte) error {
	wrap := func(err error) error { return fmt.Errorf("CRIU's kernel cache: %w", err) }
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".torpor-kdat-")
	if err != nil {
		return wrap(err)
	}
	defer os.Remove(tmp)
	if err := unix.Mount("torpor-kdat", tmp, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=64k,mode=0700"); err != nil {
		return wrap(fmt.Errorf("mount a tmpfs on %s: %w", tmp, err))
	}
	defer unix.Unmount(tmp, unix.MNT_DETACH)
	src := filepath.Join(tmp, filepath.Base(path))
	if err := os.WriteFile(src, data, 0o600); err != nil {
		return wrap(err)
	}
	// The placeholder: created here, or an empty one a restart left.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return wrap(err)
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return wrap(err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != 0 {
		return wrap(fmt.Errorf("%s changed while the cache was made; left alone", path))
	}
	if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
		return wrap(fmt.Errorf("bind %s: %w", path, err))
	}
	if err := unix.Mount("", path, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		return wrap(fmt.Errorf("make %s read-only: %w", path, err))
	}
	return nil
}

// KerndatState says whether CRIU finds a kernel cache it may trust on this
// machine, how, and if not, what to do (for `torpor doctor`).
func KerndatState() (ok bool, detail, remedy string, err error) {
	return kerndatState(KerndatCache)
}

func kerndatState(path string) (bool, string, string, error) {
	dir := filepath.Dir(path)
	if tmpfs, err := isTmpfs(dir); err != nil {
		return false, "", "", err
	} else if tmpfs {
		return true, fmt.Sprintf("%s is a tmpfs: CRIU keeps its kernel cache there itself", dir), "", nil
	}
	present, err := kerndatPresent(path)
	if err != nil {
		return false, "", "remove it; a shim then mounts CRIU's cache there", err
	}
	if !present {
		return false, fmt.Sprintf("%s is not a tmpfs and %s holds no cache: CRIU probes the kernel at every dump, restore and lazy-pages daemon (35-40 ms each on the benchmark machine)", dir, path),
			"start a shim (`torpor shim`), which mounts CRIU's cache from a tmpfs, or make " + dir + " a tmpfs", nil
	}
	if tmpfs, err := isTmpfs(path); err != nil {
		return false, "", "", err
	} else if tmpfs {
		return true, fmt.Sprintf("%s is mounted from a tmpfs: CRIU loads it, until the machine restarts", path), "", nil
	}
	return false, fmt.Sprintf("%s is a file on %s's disk file system: CRIU loads it, after a reboot into another kernel too, when it is wrong", path, dir),
		"remove " + path + "; a shim then mounts CRIU's cache from a tmpfs", nil
}
