// Package nsrun runs code on a dedicated OS thread that has entered (or
// created) a network namespace. The thread is never handed back to the Go
// scheduler: the goroutine exits while still locked, so the runtime destroys
// the thread and no other goroutine ever runs in the foreign namespace.
//
// It is the one place torpor does this: the shim starts sandbox inits and
// CRIU in a job-node's namespace, netquiesce opens sockets and attaches
// programs there and creates named namespaces, the doctor tries a veth
// pair in a throw-away one, and CRIU's kernel cache is made in a mount
// namespace of a thread's own (OnThread).
package nsrun

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// OnThread runs fn on a fresh goroutine locked to its OS thread and returns
// its error. The thread is never unlocked, so whatever fn changes about it
// (its namespaces, its credentials) dies with it; the caller's thread never
// changes.
func OnThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		errc <- fn()
	}()
	return <-errc
}

// InNetNS runs fn on a fresh locked OS thread inside the network namespace
// ns. Processes forked by fn (exec.Cmd.Start) inherit that namespace, and
// sockets fn opens stay in it and may be used from any goroutine afterwards.
// ns must be open: a closed handle is an error, never the caller's namespace
// by mistake.
func InNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return errors.New("enter network namespace: the handle is closed")
	}
	return OnThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", ns, err)
		}
		return fn()
	})
}

// InNetNSPath is InNetNS for a namespace file such as /run/netns/NAME.
// An empty path runs fn in the caller's namespace, still on its own thread.
func InNetNSPath(path string, fn func() error) error {
	if path == "" {
		return OnThread(fn)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	return InNetNS(ns, fn)
}

// InNewNetNS runs fn on a fresh locked OS thread moved into a new, unnamed
// network namespace. The namespace goes away with the thread unless fn keeps
// it (a bind mount of /proc/thread-self/ns/net, a process, an open socket).
func InNewNetNS(fn func() error) error {
	return OnThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		return fn()
	})
}
