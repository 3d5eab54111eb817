package netquiesce

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces live, as with `ip netns`.
const NetnsDir = "/run/netns"

// NewNamedNetns creates a new network namespace bind-mounted at
// /run/netns/<name> (visible to `ip netns`) and returns an open handle to it.
// The caller's namespace does not change: the namespace is created on a locked,
// throw-away OS thread. The caller must Close the handle; DeleteNamedNetns
// removes the name. Where the kernel can (Linux 6.1 on), the namespace has
// socket hash tables of its own (see OwnTCPBuckets).
func NewNamedNetns(name string) (netns.NsHandle, error) {
	return newNamedNetns(name, inNewOwnTablesNetNS)
}

// newNamedNetns is NewNamedNetns with the namespace made by inNew, which runs
// its function on a thread inside a new namespace (nsrun.InNewNetNS's form).
func newNamedNetns(name string, inNew func(func() error) error) (netns.NsHandle, error) {
	if name == "" || filepath.Base(name) != name || name == "." || name == ".." {
		return netns.None(), fmt.Errorf("create network namespace %q: invalid name", name)
	}
	if err := ensureNetnsDir(); err != nil {
		return netns.None(), err
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return netns.None(), fmt.Errorf("create network namespace %q: %w", name, err)
	}
	f.Close()

	err = inNew(func() error {
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount network namespace at %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return netns.None(), fmt.Errorf("create network namespace %q: %w", name, err)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		_ = DeleteNamedNetns(name)
		return netns.None(), fmt.Errorf("open network namespace %q: %w", name, err)
	}
	return ns, nil
}

// DeleteNamedNetns unmounts and removes /run/netns/<name>. A name that is
// already gone is not an error. The namespace itself lives on while any
// process, handle or bind mount still refers to it.
func DeleteNamedNetns(name string) error {
	if name == "" || filepath.Base(name) != name {
		return fmt.Errorf("delete network namespace %q: invalid name", name)
	}
	path := filepath.Join(NetnsDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove network namespace %s: %w", path, err)
	}
	return nil
}

var netnsDirMu sync.Mutex

// NetnsPath returns /run/netns/<name>.
func NetnsPath(name string) string { return filepath.Join(NetnsDir, name) }

// ensureNetnsDir makes /run/netns a shared bind mount of itself, as iproute2
// does, so namespaces mounted there propagate to other mount namespaces.
func ensureNetnsDir() error {
	netnsDirMu.Lock()
	defer netnsDirMu.Unlock()
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetnsDir, err)
	}
	err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make %s shared: %w", NetnsDir, err)
	}
	// Not a mount point yet: bind it onto itself, then share it.
	if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount %s: %w", NetnsDir, err)
	}
	if err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", NetnsDir, err)
	}
	return nil
}
