package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

var clusterSeq atomic.Int32

// env is one test's cluster, CRIU driver, cgroup root and scratch directory.
type env struct {
	t       testing.TB
	c       *simhost.Cluster
	drv     *criu.Driver
	mount   string
	jobRel  string // "/torpor/t<pid>x<n>"
	dir     string
	log     *slog.Logger
	seq     int
	streams int
}

// newEnv creates a cluster of n hosts. Its cleanup, which runs after every
// sandbox cleanup registered later, closes the cluster and fails the test if
// anything was left behind.
func newEnv(t testing.TB, hosts int) *env {
	t.Helper()
	testutil.RequireRoot(t, "creates network namespaces, cgroups and runs CRIU")
	bin, err := criu.Locator{}.Find()
	if err != nil {
		t.Fatal(err)
	}
	mount, err := cgroup.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("t%dx%d", os.Getpid(), clusterSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := simhost.NewCluster(ctx, name, hosts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if os.Getenv("TORPOR_TEST_KEEP") != "" { // keep images and CRIU logs for a post-mortem
		if dir, err = os.MkdirTemp("", "torpor-"+t.Name()+"-"); err != nil {
			t.Fatal(err)
		}
		t.Logf("keeping %s", dir)
	}
	e := &env{t: t, c: c, mount: mount, jobRel: "/torpor/" + name, dir: dir,
		log: slog.New(slog.NewTextHandler(testutil.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelInfo}))}
	e.drv = criu.NewDriver(bin, e.log)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if err := simhost.LeakCheck(c, filepath.Join(mount, e.jobRel), "tpv"); err != nil {
			t.Errorf("leak check: %v", err)
		}
	})
	return e
}

// sandbox creates job-node `node` (1-based, it picks the floating address)
// on host `host`; Destroy runs at cleanup.
func (e *env) sandbox(host, node int, locked bool) *Sandbox {
	e.t.Helper()
	e.seq++
	h := e.c.Host(host)
	cfg := Config{
		Name:      fmt.Sprintf("n%d@h%d", node, host),
		NetNS:     simhost.NetNSName(e.c.Name, fmt.Sprintf("n%d-%d", node, e.seq)),
		Hostname:  fmt.Sprintf("node%d", node),
		Address:   simhost.NodeAddr(node),
		HostNetNS: h.NetNS,
		Bridge:    h.Bridge,
		Cgroup:    fmt.Sprintf("%s/n%d-%d", e.jobRel, node, e.seq),
		Locked:    locked,
		Log:       e.log,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := New(ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Destroy(ctx); err != nil {
			e.t.Errorf("destroy: %v", err)
		}
	})
	return s
}

// stream is a tcpstream receiver in one sandbox and its sender in another.
type stream struct {
	recv, send         *Sandbox
	recvStat, sendStat string
}

// startStream starts a receiver reading at readRate (a slow reader keeps the
// sender's and receiver's queues full: data always in flight) and a sender.
func (e *env) startStream(recv, send *Sandbox, readRate string) *stream {
	e.t.Helper()
	e.streams++
	d := filepath.Join(e.dir, fmt.Sprintf("stream%d", e.streams))
	if err := os.MkdirAll(d, 0o755); err != nil {
		e.t.Fatal(err)
	}
	st := &stream{recv: recv, send: send, recvStat: filepath.Join(d, "recv.status"), sendStat: filepath.Join(d, "send.status")}
	ctx := context.Background()
	err := recv.Start(ctx, Process{
		Argv:   []string{tcpstreamBin, "-listen", ":7000", "-status", st.recvStat, "-read-rate", readRate, "-chunk", "4096"},
		Output: filepath.Join(d, "recv.out"), InitOutput: filepath.Join(d, "recv.init"),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	err = send.Start(ctx, Process{
		Argv:   []string{tcpstreamBin, "-connect", recv.IP().String() + ":7000", "-status", st.sendStat, "-chunk", "1000"},
		Output: filepath.Join(d, "send.out"), InitOutput: filepath.Join(d, "send.init"),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// readStatus parses a tcpstream status file.
func readStatus(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("status %s: %q", path, b)
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("status %s: %q", path, b)
	}
	if f[1] != "ok" {
		return n, fmt.Errorf("stream failed: %s", strings.TrimSpace(string(b)))
	}
	return n, nil
}

// streamingPair creates sandbox a (host 1, job-node 1) and sandbox b (host 2,
// job-node 2), starts a stream from b to a at readRate and waits up to 10s
// until a verified more than beyond bytes; it returns that count.
func (e *env) streamingPair(beyond uint64) (a, b *Sandbox, st *stream, verified uint64) {
	e.t.Helper()
	a = e.sandbox(1, 1, false)
	b = e.sandbox(2, 2, false)
	st = e.startStream(a, b, readRate)
	return a, b, st, e.waitVerified(st, beyond, 10*time.Second)
}

// waitVerified waits until the receiver verified more than `beyond` bytes and
// returns the count. It fails at once on a bad byte.
func (e *env) waitVerified(st *stream, beyond uint64, timeout time.Duration) uint64 {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, err := readStatus(st.recvStat)
		if err != nil && !os.IsNotExist(err) && !strings.Contains(err.Error(), `""`) {
			e.t.Fatalf("receiver: %v", err)
		}
		if n > beyond {
			return n
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("receiver stuck at %d bytes (want > %d) after %v; recv %s, send %s", n, beyond, timeout,
				st.recv.State(), st.send.State())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) images(name string) string {
	d := filepath.Join(e.dir, name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		e.t.Fatal(err)
	}
	return d
}

func streamOpts(images string, leaveRunning bool) criu.Options {
	return criu.Options{ImagesDir: images, TCPEstablished: true, LeaveRunning: leaveRunning, FileLocks: true}
}

// startHogs runs the memory hog mode of this test binary in s: two
// processes that touch mib MiB each, and waits until both have.
func (e *env) startHogs(s *Sandbox, mib int) {
	e.t.Helper()
	ready := filepath.Join(e.dir, fmt.Sprintf("ready-%d", e.seq))
	self, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	err = s.Start(context.Background(), Process{
		Argv: []string{self},
		Env:  []string{fmt.Sprintf("%s=%d", hogEnv, mib), hogReadyEnv + "=" + ready},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if n, _ := filepath.Glob(ready + ".*"); len(n) == 2 {
			return
		}
		if time.Now().After(deadline) || s.State() != Running {
			e.t.Fatalf("memory hogs not ready (sandbox %s, %v)", s.State(), s.ExitErr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
