package criu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DumpLockPath serializes CRIU dumps across every process on this machine:
// every shim of the machine (simulated hosts are several) takes it.
const DumpLockPath = "/run/torpor/criu-dump.lock"

// lockMachine takes an exclusive flock on path, waiting until ctx ends. A
// waiter sleeps in a blocking flock on a thread of its own, so the kernel
// hands it the lock the moment its holder lets go: the dumps of one machine
// follow each other without a gap (a poll added up to its interval to every
// hand-over). When ctx ends first, the waiting thread stays until it gets
// the lock and then gives it back at once.
func lockMachine(ctx context.Context, path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open dump lock: %w", err)
	}
	fd := int(f.Fd())
	unlock := func() {
		_ = unix.Flock(fd, unix.LOCK_UN)
		f.Close()
	}
	err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return unlock, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	got := make(chan error, 1)
	go func() { got <- flockWait(fd) }()
	select {
	case err := <-got:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		return unlock, nil
	case <-ctx.Done():
		go func() {
			if err := <-got; err == nil {
				unlock()
				return
			}
			f.Close()
		}()
		return nil, fmt.Errorf("wait for another CRIU dump on this machine: %w", context.Cause(ctx))
	}
}

// flockWait blocks until it holds fd's exclusive flock. The Go runtime's
// preemption signals interrupt the wait (EINTR); it waits again.
func flockWait(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
