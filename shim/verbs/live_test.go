package verbs

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// The helper mode of the test binary: a stand-in MPI rank that opens
// helperOpenEnv (when set), prints "fd N" and waits for stdin to close.
//
// The stand-in opens the device node with O_PATH. This machine has no RDMA
// driver, so a real open(2) of a 231:192 node fails with ENXIO; an O_PATH fd
// still has the node as its link target and its device number, which is
// what the scanner looks at.
const (
	helperEnv     = "_TORPOR_VERBS_HELPER"
	helperOpenEnv = "_TORPOR_VERBS_HELPER_OPEN"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(runHelper())
	}
	os.Exit(m.Run())
}

func runHelper() int {
	fd := -1
	if p := os.Getenv(helperOpenEnv); p != "" {
		var err error
		fd, err = unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "open %s: %v\n", p, err)
			return 1
		}
	}
	fmt.Printf("fd %d\n", fd)
	var b [1]byte
	for {
		if _, err := os.Stdin.Read(b[:]); err != nil {
			return 0
		}
	}
}

type helper struct {
	pid   int
	fd    int
	stdin *os.File
	cmd   *exec.Cmd
}

// startHelper starts a stand-in rank that holds an O_PATH fd on open (none
// when open is empty). It is stopped by t.Cleanup, or earlier by stop.
func startHelper(t *testing.T, open string, env ...string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperOpenEnv+"="+open)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	h := &helper{pid: cmd.Process.Pid, cmd: cmd, stdin: stdin.(*os.File)}
	t.Cleanup(h.stop)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if _, serr := fmt.Sscanf(line, "fd %d", &h.fd); err != nil || serr != nil {
		t.Fatalf("helper did not start: %q, %v, %v", line, err, serr)
	}
	return h
}

// stop closes the helper's stdin and reaps it, killing it if it lingers.
func (h *helper) stop() {
	if h.cmd.ProcessState != nil {
		return
	}
	h.stdin.Close()
	done := make(chan struct{})
	go func() { h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		h.cmd.Process.Kill()
		<-done
	}
}

// mknodChar creates a character device node (mode 0600) at path.
func mknodChar(t *testing.T, path string, major, minor uint32) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(major, minor))); err != nil {
		t.Fatalf("mknod %s %d:%d: %v", path, major, minor, err)
	}
}

func TestCheckStandInUverbs(t *testing.T) {
	testutil.RequireRoot(t, "mknod of a character device node with the InfiniBand major 231")
	dev := filepath.Join(t.TempDir(), "dev")
	node := filepath.Join(dev, "infiniband", "uverbs0")
	mknodChar(t, node, ibMajor, ibUverbsMinor)
	s := Scanner{DevRoot: dev}

	t.Run("fd held", func(t *testing.T) {
		h := startHelper(t, node, "PMIX_RANK=3")
		err := s.Check([]int{os.Getpid(), h.pid})
		var ve *Error
		if !errors.As(err, &ve) || !errors.Is(err, ErrVerbsInUse) {
			t.Fatalf("Check = %v, want *Error", err)
		}
		want := Finding{PID: h.pid, Comm: ve.Findings[0].Comm, Rank: 3, FD: h.fd, Path: node, Kind: KindUverbs}
		if len(ve.Findings) != 1 || ve.Findings[0] != want {
			t.Fatalf("findings = %v, want [%v]", ve.Findings, want)
		}
		msg := err.Error()
		for _, s := range []string{
			fmt.Sprintf("pid %d (", h.pid), "rank 3", fmt.Sprintf("fd %d -> %s (uverbs)", h.fd, node),
			"UCX_TLS=tcp,sm,self", "--mca pml ob1 --mca btl tcp,self,vader",
		} {
			if !strings.Contains(msg, s) {
				t.Errorf("message lacks %q:\n%s", s, msg)
			}
		}
		t.Logf("message:\n%s", msg)
	})
	t.Run("no fd", func(t *testing.T) {
		h := startHelper(t, "")
		if err := s.Check([]int{h.pid}); err != nil {
			t.Fatalf("Check = %v, want nil", err)
		}
	})
}

// A device of an RDMA driver is found by its major number whatever its path,
// even after the node was unlinked; the default scanner (real /proc, /dev)
// does it.
func TestCheckStandInByMajor(t *testing.T) {
	testutil.RequireRoot(t, "mknod of a character device node with the InfiniBand major 231")
	tests := []struct {
		name         string
		major, minor uint32
		unlink       bool
		want         Kind
	}{
		{"uverbs elsewhere", ibMajor, ibUverbsMinor + 1, false, KindUverbs},
		{"umad elsewhere", ibMajor, 0, false, KindUMAD},
		{"issm deleted", ibMajor, ibUmadMinorEnd, true, KindISSM},
		{"uverbs deleted", ibMajor, ibUverbsMinor, true, KindUverbs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := filepath.Join(t.TempDir(), "elsewhere", "notverbs")
			mknodChar(t, node, tt.major, tt.minor)
			h := startHelper(t, node)
			target := node
			if tt.unlink {
				if err := os.Remove(node); err != nil {
					t.Fatal(err)
				}
				target = node + deletedSuffix
			}
			got, err := Scan([]int{h.pid})
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			if len(got) != 1 || got[0].FD != h.fd || got[0].Path != target || got[0].Kind != tt.want {
				t.Fatalf("findings = %v, want fd %d -> %s (%s)", got, h.fd, target, tt.want)
			}
		})
	}
}

// The test process itself, with sockets of every kind, pipes, an eventfd, a
// memfd (open and mapped), an epoll fd and /dev/null open, holds nothing.
func TestScanNormalProcess(t *testing.T) {
	closeFD := func(fd int) { t.Cleanup(func() { unix.Close(fd) }) }

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeFD(pair[0])
	closeFD(pair[1])
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	closeFD(nl)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	closeFD(efd)
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	closeFD(ep)
	mfd, err := unix.MemfdCreate("torpor-verbs-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	closeFD(mfd)
	if err := unix.Ftruncate(mfd, 4096); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(mfd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { null.Close() })

	got, err := Scan([]int{os.Getpid()})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if len(got) != 0 {
		t.Fatalf("findings on a process without RDMA: %v", got)
	}
	h := startHelper(t, "")
	if err := Check([]int{os.Getpid(), h.pid}); err != nil {
		t.Fatalf("Check(self, helper) = %v", err)
	}
}

func TestScanVanishedPID(t *testing.T) {
	h := startHelper(t, "")
	h.stop()
	if err := syscall.Kill(h.pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("helper %d still there: %v", h.pid, err)
	}
	pidMax := 1 << 22 // the kernel's upper bound for pid_max: never a pid
	got, err := Scan([]int{h.pid, pidMax + 1})
	if err != nil || len(got) != 0 {
		t.Fatalf("Scan(vanished) = %v, %v; want none, nil", got, err)
	}
	if err := Check([]int{h.pid}); err != nil {
		t.Fatalf("Check(vanished) = %v", err)
	}
}
