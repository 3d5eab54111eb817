// Package nsrun runs code on a dedicated OS thread that has entered a network
// namespace. The thread is never handed back to the Go scheduler: the goroutine
// exits while still locked, so the runtime destroys the thread and no other
// goroutine ever runs in the foreign namespace.
package nsrun

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNetNS runs fn on a fresh locked OS thread inside the network namespace ns.
// Processes forked by fn (exec.Cmd.Start) inherit that namespace. A zero or
// closed handle (netns.None()) runs fn in the caller's namespace, still on its
// own thread.
func InNetNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		if ns.IsOpen() {
			if err := netns.Set(ns); err != nil {
				errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// InNetNSPath is InNetNS for a namespace file such as /run/netns/NAME.
// An empty path runs fn in the caller's namespace.
func InNetNSPath(path string, fn func() error) error {
	if path == "" {
		return InNetNS(netns.None(), fn)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	return InNetNS(ns, fn)
}
