package simhost

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Isolated hosts: a simulated host may get a mount namespace of its own
// (Cluster.NewMountNS), in which some directories (its run directory, its
// image directory, a coordinator's state) are bind mounts of directories
// only that namespace shows there. Processes started in it (Host.Command)
// see their own copies at the common paths and none of another host's:
// nothing written there crosses between hosts except over the network.
//
// Each namespace is kept by a bind mount of its nsfs file at
// MountNSDir/<cluster>/<part>, a directory made a private mount so that the
// namespaces' copies of it do not hold each other (util-linux unshare
// --mount=FILE needs that). Go cannot unshare a mount namespace for one
// of its threads, so util-linux's unshare makes them and nsenter enters
// them.

// MountNSDir holds the clusters' mount namespace files.
const MountNSDir = "/run/torpor-sim"

func (c *Cluster) mountNSDir() string { return filepath.Join(MountNSDir, c.Name) }

// NewMountNS makes a mount namespace for part (a host "h<i>", or another
// name such as "coord") in which each bind's target (an absolute
// directory, made if missing) shows its source (made if missing) instead,
// and returns its file (for Host.Command and nsenter --mount). The cluster's
// Close removes it.
func (c *Cluster) NewMountNS(part string, binds [][2]string) (string, error) {
	if part == "" || strings.ContainsAny(part, "/ ") {
		return "", fmt.Errorf("mount namespace: bad name %q", part)
	}
	dir := c.mountNSDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if !isMountPoint(dir) {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return "", fmt.Errorf("mount namespace directory %s: %w", dir, err)
		}
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return "", fmt.Errorf("make %s private: %w", dir, err)
	}
	file := filepath.Join(dir, part)
	if f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600); err != nil {
		return "", fmt.Errorf("mount namespace of %s: %w", part, err)
	} else {
		f.Close()
	}
	var script []string
	for _, b := range binds {
		src, dst := b[0], b[1]
		if !filepath.IsAbs(src) || !filepath.IsAbs(dst) {
			os.Remove(file)
			return "", fmt.Errorf("mount namespace of %s: %s -> %s: paths must be absolute", part, src, dst)
		}
		for _, d := range []string{src, dst} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				os.Remove(file)
				return "", err
			}
		}
		script = append(script, fmt.Sprintf("mount --bind %s %s", shellQuote(src), shellQuote(dst)))
	}
	if len(script) == 0 {
		script = []string{"true"}
	}
	// Slave: the host's mounts made later still show inside; none made
	// inside shows outside.
	out, err := exec.Command("unshare", "--mount="+file, "--propagation", "slave", "--", "sh", "-ec", strings.Join(script, "\n")).CombinedOutput()
	if err != nil {
		_ = unix.Unmount(file, unix.MNT_DETACH)
		os.Remove(file)
		return "", fmt.Errorf("mount namespace of %s: %v: %s", part, err, strings.TrimSpace(string(out)))
	}
	return file, nil
}

// Command is name with args run inside the mount namespace file (from
// NewMountNS), or as is when file is "".
func Command(file, name string, args ...string) *exec.Cmd {
	if file == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("nsenter", append([]string{"--mount=" + file, "--", name}, args...)...)
}

// Command is name with args run in h's network namespace, and in its mount
// namespace when it has one: where the host's daemons run.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	ns := []string{"--net=" + h.NetNSPath()}
	if h.MountNS != "" {
		ns = append(ns, "--mount="+h.MountNS)
	}
	return exec.Command("nsenter", append(append(ns, "--", name), args...)...)
}

// removeMountNSes unmounts and removes every mount namespace file of the
// cluster and their directory. A namespace lives on while processes are in
// it; its mounts go with the last of them.
func (c *Cluster) removeMountNSes() error {
	dir := c.mountNSDir()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		f := filepath.Join(dir, e.Name())
		if err := unix.Unmount(f, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", f, err))
		}
		if err := os.Remove(f); err != nil {
			errs = append(errs, err)
		}
	}
	if isMountPoint(dir) {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", dir, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	_ = os.Remove(MountNSDir) // once no cluster has any
	return errors.Join(errs...)
}

// isMountPoint says whether dir is the root of a mount (statx's
// STATX_ATTR_MOUNT_ROOT, Linux 5.8).
func isMountPoint(dir string) bool {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &st); err != nil {
		return false
	}
	return st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
