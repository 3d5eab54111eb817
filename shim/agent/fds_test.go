package agent

import (
	"os"
	"os/exec"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNoInheritedDescriptors: a descriptor this process holds without
// close-on-exec (as one inherited from a shell) does not reach what an
// agent starts once the agent exists.
func TestNoInheritedDescriptors(t *testing.T) {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY, 0) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	link := "/proc/self/fd/" + strconv.Itoa(fd)
	seen := func() bool { return exec.Command("test", "-e", link).Run() == nil }
	if !seen() {
		t.Fatalf("a child does not see descriptor %d before the agent: the test proves nothing", fd)
	}
	if _, err := New(Config{Host: "h1", Bridge: "br0", RunDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if seen() {
		t.Fatalf("descriptor %d still reaches a child process", fd)
	}
	if _, err := os.Stat(link); err != nil {
		t.Fatalf("descriptor %d was closed, not only marked: %v", fd, err)
	}
}
