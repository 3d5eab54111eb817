package nsrun

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// netnsIno is the inode of the network namespace of the calling thread.
func netnsIno(t *testing.T) uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestOnThreadAndCallerNamespace(t *testing.T) {
	self := netnsIno(t)
	var inner uint64
	var innerTid int
	if err := InNetNSPath("", func() error { inner, innerTid = netnsIno(t), unix.Gettid(); return nil }); err != nil {
		t.Fatal(err)
	}
	if inner != self {
		t.Errorf("InNetNSPath(\"\") ran in namespace %d, want the caller's %d", inner, self)
	}
	// The thread fn ran on is not handed back: the runtime ends it (or, if
	// it was the process's main thread, which cannot exit, wedges it: it
	// runs no goroutine again).
	deadline := time.Now().Add(5 * time.Second)
	for innerTid != os.Getpid() {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", innerTid)); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d that fn ran on still exists", innerTid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := InNetNS(netns.None(), func() error { t.Error("fn ran with a closed handle"); return nil }); err == nil {
		t.Error("InNetNS with a closed handle succeeded")
	}
}

func TestNewAndEnter(t *testing.T) {
	testutil.RequireRoot(t, "unshares a network namespace")
	self := netnsIno(t)
	var ns netns.NsHandle
	var created uint64
	err := InNewNetNS(func() error {
		created = netnsIno(t)
		var err error
		ns, err = netns.Get() // keeps the namespace after the thread is gone
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if created == self {
		t.Fatal("InNewNetNS ran in the caller's namespace")
	}
	if now := netnsIno(t); now != self {
		t.Fatalf("the caller's thread moved to namespace %d", now)
	}
	var entered uint64
	if err := InNetNS(ns, func() error { entered = netnsIno(t); return nil }); err != nil {
		t.Fatal(err)
	}
	if entered != created {
		t.Errorf("InNetNS ran in namespace %d, want %d", entered, created)
	}
}
