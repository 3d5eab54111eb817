package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// build compiles a main package into dir.
func build(t *testing.T, dir, pkg, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if b, err := exec.Command(gobin, "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// buildTorpor makes a directory for a test, removed after it, and builds
// the torpor binary in it. Not t.TempDir: its parent is private to root,
// and tests also run the CLI as another user, who must reach the binary
// and the socket.
func buildTorpor(t *testing.T, prefix string) (dir, torpor string) {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, build(t, dir, "github.com/torpor-hpc/torpor/cmd/torpor", "torpor")
}

// cluster is a coordinator and shim daemons, each a separate torpor process,
// on simulated hosts.
type cluster struct {
	t      *testing.T
	dir    string
	torpor string
	socket string
	runDir string
	state  string
	ckpt   string
	pki    string
	addr   string
	// pkiHosts, if set, are the addresses the certificates name
	// (--pki-hosts) instead of the loopback's.
	pkiHosts []string
	cgParent string
	sim      *simhost.Cluster
	coord    *exec.Cmd
	shims    []*exec.Cmd
	runCmd   *exec.Cmd // the `torpor run` of streamJob
	logs     map[string]*logBuffer
	// coordArgs are added to every start of the coordinator.
	coordArgs []string
	// mountNS, on an isolated cluster, is the mount namespace file each
	// daemon runs in: "h<i>" for host i's shim, "coord" for the
	// coordinator (see newIsolatedCluster).
	mountNS map[string]string
}

func newCluster(t *testing.T, hosts int, coordArgs ...string) *cluster {
	t.Helper()
	return newClusterOf(t, simhost.NewCluster, hosts, coordArgs...)
}

// newRoutedCluster is newCluster on hosts that share no L2 segment
// (simhost.NewRoutedCluster): the shims stretch their bridges over the
// routed network with VXLAN (torpor shim --vxlan).
func newRoutedCluster(t *testing.T, hosts int, coordArgs ...string) *cluster {
	t.Helper()
	return newClusterOf(t, simhost.NewRoutedCluster, hosts, coordArgs...)
}

// newIsolatedCluster is newRoutedCluster whose hosts share no directory
// either: each shim runs in a mount namespace of its own in which the run
// directory and the image directory (c.dir/images) are that host's own,
// backed by c.dir/hosts/h<i>/{run,images}, and the coordinator in one in
// which its state and checkpoint directories are, backed by
// c.dir/hosts/coord. Every byte between hosts crosses TCP: the job's output
// reaches `torpor run` through the coordinator, checkpoints stay on the
// hosts (--local-checkpoints, added here) and migrations stream.
func newIsolatedCluster(t *testing.T, hosts int, coordArgs ...string) *cluster {
	t.Helper()
	var c *cluster
	c = newClusterOpts(t, simhost.NewRoutedCluster, hosts, func(cl *cluster) error {
		c = cl
		c.mountNS = map[string]string{}
		for i := 1; i <= hosts; i++ {
			h := fmt.Sprintf("h%d", i)
			f, err := c.sim.NewMountNS(h, [][2]string{
				{filepath.Join(c.dir, "hosts", h, "run"), c.runDir},
				{filepath.Join(c.dir, "hosts", h, "images"), filepath.Join(c.dir, "images")},
			})
			if err != nil {
				return err
			}
			c.mountNS[h], c.sim.Host(i).MountNS = f, f
		}
		f, err := c.sim.NewMountNS("coord", [][2]string{
			{filepath.Join(c.dir, "hosts", "coord", "state"), c.state},
			{filepath.Join(c.dir, "hosts", "coord", "ckpt"), c.ckpt},
		})
		if err != nil {
			return err
		}
		c.mountNS["coord"] = f
		// The daemons talk over the routed network, each in its host's
		// network namespace: the coordinator in a host of its own.
		ctl, err := c.sim.AddControlHost()
		if err != nil {
			return err
		}
		ctl.MountNS = f
		c.addr = net.JoinHostPort(ctl.Underlay, strconv.Itoa(20000+os.Getpid()%10000))
		c.pkiHosts = append(c.sim.Underlay(), ctl.Underlay)
		return nil
	}, append([]string{"--local-checkpoints"}, coordArgs...)...)
	return c
}

// hostDir is where host h's (h<i>, or coord) private copy of the
// directory kind (run, images, state, ckpt) of an isolated cluster is seen
// from the machine.
func (c *cluster) hostDir(h, kind string) string { return filepath.Join(c.dir, "hosts", h, kind) }

func newClusterOf(t *testing.T, create func(context.Context, string, int) (*simhost.Cluster, error), hosts int, coordArgs ...string) *cluster {
	t.Helper()
	return newClusterOpts(t, create, hosts, nil, coordArgs...)
}

// newClusterOpts is newClusterOf calling prepare, if set, once the
// simulated hosts exist, before any daemon starts.
func newClusterOpts(t *testing.T, create func(context.Context, string, int) (*simhost.Cluster, error), hosts int, prepare func(*cluster) error, coordArgs ...string) *cluster {
	t.Helper()
	testutil.RequireRoot(t, "simulated hosts, sandboxes, CRIU and eBPF")
	// Built before the simulated hosts exist: a build that fails must not
	// leave them behind (c.close, which removes them, is not registered yet).
	dir, torpor := buildTorpor(t, "torpor-e2e-")
	name := fmt.Sprintf("e%d", os.Getpid()%100000)
	sim, err := create(context.Background(), name, hosts)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		t: t, dir: dir, torpor: torpor,
		socket: filepath.Join(dir, "coordinator.sock"), runDir: filepath.Join(dir, "run"),
		state: filepath.Join(dir, "state"), ckpt: filepath.Join(dir, "ckpt"), pki: filepath.Join(dir, "pki"),
		cgParent: "/torpor/" + name, sim: sim, logs: map[string]*logBuffer{},
		// Below the ephemeral ports (32768 and up): a connection of
		// another process may hold one on 127.0.0.1 when the
		// coordinator (re)starts.
		addr:      fmt.Sprintf("127.0.0.1:%d", 20000+os.Getpid()%10000),
		coordArgs: coordArgs,
	}
	t.Cleanup(c.close)
	if prepare != nil {
		if err := prepare(c); err != nil {
			t.Fatal(err)
		}
	}
	initPKI := []string{"coordinator", "--init-pki", "--pki", c.pki}
	if c.pkiHosts != nil {
		initPKI = append(initPKI, "--pki-hosts", strings.Join(c.pkiHosts, ","))
	}
	if out, err := exec.Command(c.torpor, initPKI...).CombinedOutput(); err != nil {
		t.Fatalf("init pki: %v\n%s", err, out)
	}
	c.startCoordinator()
	c.shims = make([]*exec.Cmd, hosts)
	for i := 1; i <= hosts; i++ {
		c.startShim(i)
	}
	return c
}

// startShim starts (or starts again) the shim daemon of host i (1-based).
func (c *cluster) startShim(i int, extra ...string) {
	c.t.Helper()
	h := c.sim.Host(i)
	args := append([]string{"shim", "--host", fmt.Sprintf("h%d", i), "--netns", h.NetNS,
		"--bridge", h.Bridge, "--join", c.addr, "--pki", c.pki, "--run-dir", c.runDir,
		"--cgroup-parent", c.cgParent, "--listen", net.JoinHostPort(c.shimIP(h), "0")}, extra...)
	if c.sim.Routed {
		// Hosts that share no segment, and no image directory: migrations
		// stream their images from shim to shim.
		images := filepath.Join(c.dir, "images", fmt.Sprintf("h%d", i))
		if c.mountNS != nil {
			images = filepath.Join(c.dir, "images") // each host's own
		}
		args = append(args, "--vxlan", strings.Join(c.sim.Underlay(), ","), "--image-dir", images)
	}
	name := fmt.Sprintf("shim-h%d", i)
	if c.shims[i-1] != nil {
		stop(c.shims[i-1], syscall.SIGTERM) // or reap it, if it died
	}
	if old := c.logs[name]; old != nil {
		// Keep the earlier shim's log too: a restarted shim's story starts there.
		c.logs[name+"-before"] = old
	}
	var where *simhost.Host
	if c.mountNS != nil {
		where = h
	}
	c.shims[i-1] = c.daemonIn(where, nil, name, args...)
	// Jobs placed on the host before its shim registered would fail.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(c.logs[name].String(), "registered with coordinator") {
		if time.Now().After(deadline) {
			c.t.Fatalf("shim of h%d did not register:\n%s", i, c.logs[name])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logBuffer keeps a daemon's output; it is read while the daemon writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// daemon starts a torpor daemon whose output is kept for failure reports.
func (c *cluster) daemon(name string, args ...string) *exec.Cmd {
	c.t.Helper()
	return c.daemonAs(nil, name, args...)
}

// daemonAs is daemon run as cred (nil: root).
func (c *cluster) daemonAs(cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	c.t.Helper()
	return c.daemonIn(nil, cred, name, args...)
}

// shimIP is the address host h's shim listens on: on an isolated cluster
// its address on the routed network, else loopback.
func (c *cluster) shimIP(h *simhost.Host) string {
	if c.mountNS != nil {
		return h.Underlay
	}
	return "127.0.0.1"
}

// daemonIn is daemonAs in the namespaces of host where (nil: the
// machine's).
func (c *cluster) daemonIn(where *simhost.Host, cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	c.t.Helper()
	cmd := exec.Command(c.torpor, args...)
	if where != nil {
		cmd = where.Command(c.torpor, args...)
	}
	buf := &logBuffer{}
	c.logs[name] = buf
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+c.socket)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	return cmd
}

func (c *cluster) startCoordinator(extra ...string) {
	c.t.Helper()
	args := append([]string{"coordinator", "--state-dir", c.state, "--checkpoint-dir", c.ckpt, "--socket", c.socket,
		"--listen", c.addr, "--pki", c.pki}, append(c.coordArgs, extra...)...)
	c.coord = c.daemonIn(c.sim.Control, nil, "coordinator", args...)
	deadline := time.Now().Add(15 * time.Second)
	for {
		// Until it answers: the socket file of a coordinator that crashed
		// stays, and a CLI that finds nobody there embeds a coordinator of
		// its own on that socket (and removes it when it exits).
		if conn, err := net.Dial("unix", c.socket); err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("coordinator did not come up:\n%s", c.logs["coordinator"])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exited reports whether cmd's process has ended, without reaping it: Wait
// (or stop) still collects its status.
func exited(cmd *exec.Cmd) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err == nil && info.Signo != 0
}

func stop(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (c *cluster) close() {
	for _, s := range c.shims {
		stop(s, syscall.SIGTERM)
	}
	stop(c.coord, syscall.SIGTERM)
	if c.t.Failed() {
		for name, buf := range c.logs {
			c.t.Logf("---- %s ----\n%s", name, lastLines(buf.String(), 40))
		}
		c.logCRIULogs()
	}
	_ = c.sim.Close()
	mount, err := cgroup.Mountpoint()
	if err != nil {
		c.t.Error(err)
		return
	}
	if err := simhost.LeakCheck(c.sim, filepath.Join(mount, c.cgParent), "tpv"); err != nil {
		c.t.Errorf("leak: %v", err)
	}
}

// logCRIULogs prints the end of every CRIU log with an error that the
// cluster's shims left under the test's directory (the run directories of
// all hosts): a failed dump or restore names its log, which the test's
// cleanup then removes.
func (c *cluster) logCRIULogs() {
	_ = filepath.WalkDir(c.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		switch filepath.Base(path) {
		case "dump.log", "restore.log", "pre-dump.log", "lazy-pages.log", "page-server.log":
		default:
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil || !bytes.Contains(b, []byte("Error (")) {
			return nil
		}
		c.t.Logf("---- %s ----\n%s", path, lastLines(string(b), 30))
		return nil
	})
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cli runs the torpor CLI and returns its combined output and exit code.
func (c *cluster) cli(args ...string) (string, int) {
	c.t.Helper()
	return c.cliAs(nil, args...)
}

func (c *cluster) cliAs(cred *syscall.Credential, args ...string) (string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.torpor, args...)
	cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+c.socket)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("torpor %v: %v", args, err)
	}
	return string(out), code
}

func (c *cluster) mustCLI(args ...string) string {
	c.t.Helper()
	out, code := c.cli(args...)
	if code != 0 {
		c.t.Fatalf("torpor %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// jobState returns a job's STATE column from `torpor ps`.
func (c *cluster) jobState(job string) string {
	out, _ := c.cli("ps")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == job {
			return f[1]
		}
	}
	return ""
}

func (c *cluster) waitState(job, want string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for c.jobState(job) != want {
		if time.Now().After(deadline) {
			out, _ := c.cli("ps")
			c.t.Fatalf("job %s never became %s:\n%s", job, want, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// counter reads a fixed-width "<n> ok" status file written by tcpstream.
func readCounter(t *testing.T, path string) uint64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) >= 2 && f[1] != "ok" {
		t.Fatalf("%s: %q", path, strings.TrimSpace(string(data)))
	}
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(f[0], 10, 64)
	return n
}

func cgroupMount(t *testing.T) string {
	t.Helper()
	m, err := cgroup.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// jobTask is one process of a job as /proc shows it: every process of a
// job-node except its init (PID 1 of the sandbox's PID namespace, torpor's
// own).
type jobTask struct {
	pid     string
	node    string            // the job-node's cgroup directory
	status  map[string]string // /proc/PID/status, values with blanks collapsed
	cmdline string            // /proc/PID/cmdline, NUL-separated
}

// pmixd tells whether the task is the job-node's PMIx server.
func (t jobTask) pmixd() bool { return strings.Contains(t.cmdline, "\x00pmixd\x00") }

// jobTasks lists the processes of every job-node of job, found through the
// job-nodes' cgroups under the cluster's cgroup parent. Processes that exit
// while it looks are left out.
func (c *cluster) jobTasks(job string) []jobTask {
	c.t.Helper()
	var tasks []jobTask
	root := filepath.Join(cgroupMount(c.t), c.cgParent)
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != "cgroup.procs" || !strings.Contains(p, "/"+job+"/") {
			return nil
		}
		data, _ := os.ReadFile(p)
		for _, pid := range strings.Fields(string(data)) {
			st, err := os.ReadFile("/proc/" + pid + "/status")
			if err != nil {
				continue
			}
			t := jobTask{pid: pid, node: filepath.Dir(p), status: map[string]string{}}
			for _, line := range strings.Split(string(st), "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok {
					t.status[k] = strings.Join(strings.Fields(v), " ")
				}
			}
			if strings.HasSuffix(t.status["NSpid"], " 1") {
				continue
			}
			cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			t.cmdline = string(cmd)
			tasks = append(tasks, t)
		}
		return nil
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return tasks
}
