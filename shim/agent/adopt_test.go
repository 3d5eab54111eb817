package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/sandbox"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

var hostSeq atomic.Int32

// oneHost is a simulated host and the Config of its shim, for tests of one
// Agent (or of several that follow each other on the host).
type oneHost struct {
	t     *testing.T
	cl    *simhost.Cluster
	cfg   Config
	cgDir string // the test's cgroup parent, absolute
	logs  *syncBuffer
}

// syncBuffer collects log lines for assertions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newOneHost creates a one-host cluster. Its cleanup, after every Agent's,
// fails the test if a namespace, veth, cgroup or process was left behind.
func newOneHost(t *testing.T) *oneHost {
	t.Helper()
	testutil.RequireRoot(t, "creates namespaces, cgroups, eBPF links and runs CRIU")
	// Everything that can fail comes before the cluster, whose removal is
	// registered at once.
	mount, err := cgroup.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := criu.Locator{}.Find()
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("s%dx%d", os.Getpid()%100000, hostSeq.Add(1))
	cl, err := simhost.NewCluster(context.Background(), name, 1)
	if err != nil {
		t.Fatal(err)
	}
	h := &oneHost{t: t, cl: cl, logs: &syncBuffer{}}
	cgParent := "/torpor/test-" + name
	h.cgDir = filepath.Join(mount, cgParent)
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testutil.LogWriter(t), h.logs), &slog.HandlerOptions{Level: slog.LevelInfo}))
	h.cfg = Config{Host: "h1", HostNetNS: cl.Host(1).NetNS, Bridge: cl.Host(1).Bridge, CgroupParent: cgParent,
		RunDir: filepath.Join(t.TempDir(), "run"), CRIU: bin, Log: log}
	t.Cleanup(func() {
		if err := cl.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if err := simhost.LeakCheck(cl, h.cgDir, "tpv"); err != nil {
			t.Errorf("leak check: %v", err)
		}
	})
	return h
}

// agent returns a new Agent with the host's Config (and faults); Close runs
// at cleanup.
// startTicker starts job-node job/n0, a ticker that stops once the file stop
// exists, on a first agent of h, and returns the agent and the job-node.
func (h *oneHost) startTicker(ctx context.Context, stop string) (*Agent, agentapi.NodeRef) {
	h.t.Helper()
	a := h.agent(nil)
	mustOK(h.t, "start", a.Start(ctx, "job", tickerSpec("n0", 1, stop)))
	return a, agentapi.NodeRef{Job: "job", Node: "n0"}
}

func (h *oneHost) agent(mod func(*Config)) *Agent {
	h.t.Helper()
	cfg := h.cfg
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { a.Close(context.Background()) })
	return a
}

// tickerSpec is a job-node whose tree prints "tick" every 0.1s and exits
// with status 7 once the file stop exists.
// bash, not dash: dash vforks its commands, and CRIU cannot seize a tree
// frozen while a vfork child has not exec'd yet (the parent waits in D state;
// the dump times out after 10 s: "Unseizable non-zombie ... state D").
func tickerSpec(name string, addr int, stop string) agentapi.NodeSpec {
	return agentapi.NodeSpec{Name: name, Host: "h1", IP: simhost.NodeAddr(addr), Hostname: "tick-" + name,
		Argv: []string{"/bin/bash", "-c", "while :; do echo tick; [ -e " + stop + " ] && exit 7; sleep 0.1; done"}}
}

func ticks(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("tick\n"))
}

// waitTicks waits until the job-node's output has more than n ticks.
func waitTicks(t *testing.T, a *Agent, job, node string, n int) int {
	t.Helper()
	out := a.OutputPath(job, node)
	deadline := time.Now().Add(10 * time.Second)
	for ticks(out) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s stuck at %d ticks (want > %d)", job, node, ticks(out), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ticks(out)
}

// assertStill fails if the job-node ticks within 400ms (it is frozen).
func assertStill(t *testing.T, a *Agent, job, node string) {
	t.Helper()
	out := a.OutputPath(job, node)
	n := ticks(out)
	time.Sleep(400 * time.Millisecond)
	if m := ticks(out); m != n {
		t.Fatalf("%s/%s ticked %d -> %d while it should be frozen", job, node, n, m)
	}
}

func mustOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestAdoptRunningNode: shim A starts a job-node and dies abruptly; shim B
// adopts it and runs the whole protocol on it: status, freeze, lock, dump,
// unlock, thaw (twice: idempotent), the tree's exit status through its exit
// file, destroy.
func TestAdoptRunningNode(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	stop := filepath.Join(t.TempDir(), "stop")
	a, ref := h.startTicker(ctx, stop)
	waitTicks(t, a, "job", "n0", 2)
	rec := a.recordPath("job", "n0")
	if _, err := os.Stat(rec); err != nil {
		t.Fatalf("no record after start: %v", err)
	}
	pid := a.nodes[key("job", "n0")].sb.Pid()
	a.Release()

	b := h.agent(nil)
	n, err := b.Adopt(ctx)
	if err != nil || n != 1 {
		t.Fatalf("adopt: %d job-nodes, %v", n, err)
	}
	if !strings.Contains(h.logs.String(), "adopted job-node") {
		t.Fatal("no \"adopted job-node\" log line")
	}
	if got := b.nodes[key("job", "n0")].sb.Pid(); got != pid {
		t.Fatalf("adopted init pid %d, want %d", got, pid)
	}
	st, err := b.Status(ctx, ref)
	if err != nil || !st.Running {
		t.Fatalf("status of the adopted job-node: %+v %v", st, err)
	}
	ticked := waitTicks(t, b, "job", "n0", ticks(b.OutputPath("job", "n0")))

	// One leave-running checkpoint, as the coordinator runs it.
	mustOK(t, "freeze", b.Freeze(ctx, ref))
	mustOK(t, "lock", b.Lock(ctx, ref))
	assertStill(t, b, "job", "n0")
	res, err := b.Dump(ctx, ref, agentapi.DumpRequest{Dir: filepath.Join(t.TempDir(), "img"), LeaveRunning: true, Checkpoint: "job/1"})
	mustOK(t, "dump", err)
	for i := 0; i < 2; i++ { // idempotent
		mustOK(t, "unlock", b.Unlock(ctx, ref))
		mustOK(t, "thaw", b.Thaw(ctx, ref))
	}
	t.Logf("adopted job-node dumped: %d bytes in %d files; it runs on", res.Bytes, res.Files)
	waitTicks(t, b, "job", "n0", ticked+3)

	mustOK(t, "write stop", os.WriteFile(stop, nil, 0o644))
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err = b.Status(ctx, ref)
		mustOK(t, "status", err)
		if st.Exited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("adopted job-node did not exit: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.ExitCode != 7 {
		t.Fatalf("adopted job-node exit: %+v, want code 7", st)
	}
	t.Logf("adopted job-node ended: %+v", st)
	mustOK(t, "destroy", b.Destroy(ctx, ref))
	mustOK(t, "destroy again", b.Destroy(ctx, ref))
	if _, err := os.Stat(rec); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record left after destroy: %v", err)
	}
	if _, err := b.Status(ctx, ref); !errors.Is(err, ErrNoNode) {
		t.Fatalf("status after destroy: %v", err)
	}
}

// TestAdoptFrozenNode: a job-node frozen when its shim died stays frozen
// after adoption until the coordinator thaws it; Unlock and Thaw then work.
func TestAdoptFrozenNode(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a, ref := h.startTicker(ctx, filepath.Join(t.TempDir(), "stop"))
	waitTicks(t, a, "job", "n0", 2)
	mustOK(t, "freeze", a.Freeze(ctx, ref))
	mustOK(t, "lock", a.Lock(ctx, ref))
	a.Release()

	b := h.agent(nil)
	if n, err := b.Adopt(ctx); err != nil || n != 1 {
		t.Fatalf("adopt: %d job-nodes, %v", n, err)
	}
	if s := b.nodes[key("job", "n0")].sb.State(); s != sandbox.Frozen {
		t.Fatalf("adopted a frozen job-node as %s", s)
	}
	if st, err := b.Status(ctx, ref); err != nil || !st.Running {
		t.Fatalf("status: %+v %v", st, err)
	}
	assertStill(t, b, "job", "n0")
	resumeThenDestroy(t, b, ref)
}

// TestAdoptVanishedNode: a record whose sandbox no longer exists is removed
// with a warning, and adoption goes on without an error.
func TestAdoptVanishedNode(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a, ref := h.startTicker(ctx, filepath.Join(t.TempDir(), "stop"))
	rec := a.recordPath("job", "n0")
	data, err := os.ReadFile(rec)
	mustOK(t, "read record", err)
	mustOK(t, "destroy", a.Destroy(ctx, ref))
	mustOK(t, "mkdir", os.MkdirAll(filepath.Dir(rec), 0o700))
	mustOK(t, "put the record back", os.WriteFile(rec, data, 0o600))

	b := h.agent(nil)
	if n, err := b.Adopt(ctx); err != nil || n != 0 {
		t.Fatalf("adopt: %d job-nodes, %v; want 0, no error", n, err)
	}
	if _, err := os.Stat(rec); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record of a vanished job-node kept: %v", err)
	}
	if !strings.Contains(h.logs.String(), "is gone; forgetting it") {
		t.Fatal("no warning about the vanished job-node")
	}
	if _, err := b.Status(ctx, ref); !errors.Is(err, ErrNoNode) {
		t.Fatalf("status of a vanished job-node: %v", err)
	}
}
