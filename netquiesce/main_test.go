package netquiesce

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// The test binary doubles as a helper process: with TORPOR_NQ_HELPER=echo it
// serves TCP and UDP echo on TORPOR_NQ_ADDR inside the namespace at
// TORPOR_NQ_NETNS (if set), prints "ready <addr>" and exits when its stdin
// closes. Tests start it in a cgroup with SysProcAttr.CgroupFD.
func TestMain(m *testing.M) {
	if mode := os.Getenv("TORPOR_NQ_HELPER"); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

func runHelper(mode string) int {
	if mode != "echo" {
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		return 2
	}
	addr := os.Getenv("TORPOR_NQ_ADDR")
	var l net.Listener
	var pc net.PacketConn
	listen := func() error {
		var err error
		if l, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", l.Addr().String())
		return err
	}
	// TORPOR_NQ_NETNS unset: in the helper's own namespace.
	if err := nsrun.InNetNSPath(os.Getenv("TORPOR_NQ_NETNS"), listen); err != nil {
		fmt.Fprintf(os.Stderr, "helper listen: %v\n", err)
		return 1
	}
	serveEcho(l)
	serveUDPEcho(pc)
	fmt.Printf("ready %s\n", l.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// startEchoHelper starts the echo helper in cgroup dir (and in the named
// namespace netnsPath if not empty) and returns its TCP/UDP address. The
// helper is killed by PID and reaped when the test ends. No Pdeathsig: it
// fires when the forking OS thread exits, and locked threads exit here often;
// the helper exits on its own when its stdin (the test process) goes away.
func startEchoHelper(t *testing.T, cgroup, netnsPath, addr string) (*exec.Cmd, string) {
	t.Helper()
	cg, err := os.Open(cgroup)
	must(t, err)
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TORPOR_NQ_HELPER=echo", "TORPOR_NQ_ADDR="+addr, "TORPOR_NQ_NETNS="+netnsPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	must(t, err)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		t.Fatalf("echo helper did not start: %q %v", line, err)
	}
	return cmd, strings.TrimSpace(strings.TrimPrefix(line, "ready "))
}

// cgroup2Root finds where the cgroup v2 hierarchy is mounted.
func cgroup2Root(tb testing.TB) string {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	must(tb, err)
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) >= 5 && len(g) >= 1 && g[0] == "cgroup2" {
			return f[4]
		}
	}
	tb.Skip("needs a cgroup v2 hierarchy: none mounted")
	return ""
}

// newTestCgroup creates <cgroup2>/torpor-test-<unique>, thawed, emptied
// (cgroup.kill) and removed when the test ends.
func newTestCgroup(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(cgroup2Root(t), uniq("test"))
	must(t, os.Mkdir(dir, 0o755))
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0o644)
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return dir
}

// freezeCgroup freezes (or thaws) a cgroup v2 and waits until it is.
func freezeCgroup(t testing.TB, dir string, frozen bool) {
	t.Helper()
	v, want := "0", "frozen 0"
	if frozen {
		v, want = "1", "frozen 1"
	}
	must(t, os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte(v), 0o644))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ev, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		must(t, err)
		if strings.Contains(string(ev), want) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("cgroup %s did not reach %q", dir, want)
}

// newPair makes two namespaces joined by a veth: a 198.18.0.1/15 and b
// 198.18.0.2/15, both on eth0.
func newPair(t *testing.T) (a, b *Net) {
	t.Helper()
	a, b = newTestNet(t, "a"), newTestNet(t, "b")
	must(t, AddVeth(VethEnd{Net: a, Name: "eth0"}, VethEnd{Net: b, Name: "eth0"}))
	must(t, a.AddAddr("eth0", "198.18.0.1/15"))
	must(t, b.AddAddr("eth0", "198.18.0.2/15"))
	return a, b
}
