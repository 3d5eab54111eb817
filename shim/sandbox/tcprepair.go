package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReleaseTCPRepair turns TCP repair mode off on every TCP socket of the tree
// that is in it, and returns how many it found. A CRIU dump puts each
// established connection in repair mode and takes it out only when it
// finishes: a CRIU that died mid-dump (killed, or its deadline passed) leaves
// the connections frozen in repair mode for good: nothing is sent or
// retransmitted, and the job stalls. Call it after a failed dump, before
// the tree is thawed. Turning repair off sends a window probe that wakes
// the peer.
func (s *Sandbox) ReleaseTCPRepair() (int, error) {
	pids, err := s.cg.Procs()
	if err != nil {
		return 0, err
	}
	found := 0
	var errs []error
	for _, pid := range pids {
		n, err := releaseTCPRepair(pid)
		found += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return found, fmt.Errorf("release TCP repair mode in %s: %w", s.cfg.Name, err)
	}
	return found, nil
}

// releaseTCPRepair does it for the sockets of one process, which it reaches
// with pidfd_getfd.
func releaseTCPRepair(pid int) (int, error) {
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return 0, nil // gone meanwhile
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	found := 0
	var errs []error
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "socket:") {
			continue
		}
		num, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, num, 0)
		if errors.Is(err, unix.EBADF) {
			continue // closed meanwhile
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pid %d: get fd %d: %w", pid, num, err))
			continue
		}
		n, err := releaseSocket(fd)
		unix.Close(fd)
		found += n
		if err != nil {
			errs = append(errs, fmt.Errorf("pid %d fd %d: %w", pid, num, err))
		}
	}
	return found, errors.Join(errs...)
}

func releaseSocket(fd int) (int, error) {
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil || proto != unix.IPPROTO_TCP {
		return 0, nil
	}
	on, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR)
	if err != nil || on != 1 {
		return 0, nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
		return 1, fmt.Errorf("turn TCP repair off: %w", err)
	}
	return 1, nil
}
