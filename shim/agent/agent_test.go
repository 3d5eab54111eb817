package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/sandbox"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

func TestMain(m *testing.M) {
	sandbox.MaybeRunInit()
	code := m.Run()
	cgroup.RemoveTopIfEmpty(sandbox.DefaultCgroupParent)
	os.Exit(code)
}

// buildTCPStream compiles the stream workload into dir.
func buildTCPStream(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "tcpstream")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(gobin, "build", "-o", bin, "github.com/torpor-hpc/torpor/bench/workloads/tcpstream").CombinedOutput()
	if err != nil {
		t.Fatalf("build tcpstream: %v\n%s", err, out)
	}
	return bin
}

type e2e struct {
	t      *testing.T
	c      *coordinator.Coordinator
	agents map[string]*Agent
	dir    string
	spec   coordinator.JobSpec
}

// newE2E makes a cluster of hosts with a real shim each and a coordinator,
// and a ring job of nodes job-nodes (not started); each of opts may change
// the coordinator's options first (its faults, its view of a shim).
func newE2E(t *testing.T, hosts, nodes int, opts ...func(*coordinator.Options)) *e2e {
	t.Helper()
	testutil.RequireRoot(t, "creates namespaces, cgroups, eBPF links and runs CRIU")
	ctx := context.Background()
	name := fmt.Sprintf("a%d", os.Getpid()%100000)
	cl, err := simhost.NewCluster(ctx, name, hosts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	dir := t.TempDir()
	bin, err := criu.Locator{}.Find()
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testutil.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelInfo}))
	e := &e2e{t: t, agents: map[string]*Agent{}, dir: dir}
	agents := map[string]agentapi.Agent{}
	cgParent := "/torpor/test-" + name
	for i := 1; i <= hosts; i++ {
		h := cl.Host(i)
		hostName := fmt.Sprintf("h%d", i)
		a, err := New(Config{Host: hostName, HostNetNS: h.NetNS, Bridge: h.Bridge, CgroupParent: cgParent,
			RunDir: filepath.Join(dir, "run"), CRIU: bin, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		e.agents[hostName] = a
		agents[hostName] = a
		t.Cleanup(func() { a.Close(context.Background()) })
	}
	key, err := catalog.LoadOrCreateKey(filepath.Join(dir, "state", "catalog.key"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := catalog.Open(filepath.Join(dir, "ckpt"), key)
	if err != nil {
		t.Fatal(err)
	}
	co := coordinator.Options{StateDir: filepath.Join(dir, "state"), Store: coordinator.CatalogStore{S: store}, Agents: agents, Log: log}
	for _, o := range opts {
		o(&co)
	}
	e.c, err = coordinator.New(co)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.c.WaitBackground) // prunes and the event history end before dir goes
	// A ring of streams: job-node i receives from i-1 and sends to i+1.
	stream := buildTCPStream(t, dir)
	e.spec = coordinator.JobSpec{ID: "ring"}
	for i := 0; i < nodes; i++ {
		ip := simhost.NodeAddr(i + 1)
		next := strings.Split(simhost.NodeAddr((i+1)%nodes+1), "/")[0]
		recv := filepath.Join(dir, fmt.Sprintf("n%d.recv", i))
		send := filepath.Join(dir, fmt.Sprintf("n%d.send", i))
		cmd := fmt.Sprintf("%s -listen :7000 -status %s -read-rate 8M & exec %s -connect %s:7000 -status %s", stream, recv, stream, next, send)
		e.spec.Nodes = append(e.spec.Nodes, agentapi.NodeSpec{
			Name: fmt.Sprintf("n%d", i), Host: fmt.Sprintf("h%d", i+1), IP: ip,
			Hostname: fmt.Sprintf("ring-n%d", i), Argv: []string{"/bin/sh", "-c", cmd},
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := 0; i < nodes; i++ {
				out, _ := os.ReadFile(e.agents["h1"].OutputPath("ring", fmt.Sprintf("n%d", i)))
				t.Logf("n%d output: %s", i, out)
			}
		}
	})
	return e
}

// verified reads how many bytes job-node i's receiver has verified.
func (e *e2e) verified(i int) uint64 {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("n%d.recv", i)))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) >= 2 && f[1] != "ok" {
		e.t.Fatalf("n%d receiver reports %q", i, strings.TrimSpace(string(data)))
	}
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(f[0], 10, 64)
	return n
}

// progress waits until every receiver has verified more than it had.
func (e *e2e) progress(what string) {
	e.t.Helper()
	var before []uint64
	for i := range e.spec.Nodes {
		before = append(before, e.verified(i))
	}
	deadline := time.Now().Add(20 * time.Second)
	for i := range e.spec.Nodes {
		for e.verified(i) <= before[i]+64<<10 {
			if time.Now().After(deadline) {
				j, _ := e.c.Job("ring")
				e.t.Fatalf("%s: n%d stuck at %d verified bytes (job %s: %s)", what, i, e.verified(i), j.State, j.Reason)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var now []string
	for i := range e.spec.Nodes {
		now = append(now, fmt.Sprintf("n%d=%d", i, e.verified(i)))
	}
	e.t.Logf("%s: streams verified %s", what, strings.Join(now, " "))
}

func TestCoordinatedCycles(t *testing.T) {
	e := newE2E(t, 4, 3)
	ctx := context.Background()
	if err := e.c.Start(ctx, e.spec); err != nil {
		t.Fatal(err)
	}
	e.progress("started")
	for i := 0; i < 3; i++ {
		h, err := e.c.Checkpoint(ctx, "ring", coordinator.CheckpointOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e.progress("leave-running checkpoint " + h)
	}
	h, err := e.c.Checkpoint(ctx, "ring", coordinator.CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	if j, _ := e.c.Job("ring"); j.State != coordinator.StateSuspended {
		t.Fatalf("after suspend: %s", j.State)
	}
	if _, err := e.c.Restart(ctx, h, coordinator.RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	e.progress("restart from " + h)
	if err := e.c.Migrate(ctx, "ring", "n1", "h4"); err != nil {
		t.Fatal(err)
	}
	e.progress("migrate n1 to h4")
	// Suspend again and bring the job back with n0 on the host n1 left.
	h, err = e.c.Checkpoint(ctx, "ring", coordinator.CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Restart(ctx, "ring", coordinator.RestartOptions{Hosts: map[string]string{"n0": "h2"}}); err != nil {
		t.Fatal(err)
	}
	e.progress("restart with n0 on h2")
	j, _ := e.c.Job("ring")
	if j.State != coordinator.StateRunning || j.Reason != "" {
		t.Fatalf("job %s %q", j.State, j.Reason)
	}
}

// A job-node with un-acknowledged bytes towards a peer outside its job (a
// black hole) cannot be checkpointed: the checkpoint aborts naming the
// socket, and the job keeps running.
func TestDrainOutsideJobAborts(t *testing.T) {
	e := newE2E(t, 2, 1)
	ctx := context.Background()
	stream := filepath.Join(e.dir, "tcpstream")
	peer := coordinator.JobSpec{ID: "peer", Nodes: []agentapi.NodeSpec{{
		Name: "n0", Host: "h2", IP: simhost.NodeAddr(40), Hostname: "peer",
		Argv: []string{stream, "-listen", ":7000", "-status", filepath.Join(e.dir, "peer.recv")},
	}}}
	peerIP := strings.Split(simhost.NodeAddr(40), "/")[0]
	sender := coordinator.JobSpec{ID: "sender", Nodes: []agentapi.NodeSpec{{
		Name: "n0", Host: "h1", IP: simhost.NodeAddr(41), Hostname: "sender",
		// The sender is slower than the peer's reader, so the peer's receive
		// window stays open and a black hole always catches bytes in flight.
		// An unlimited sender fills the window: on a loaded machine the peer
		// advertised a zero window at each of ten locks (CI, 2026-12-04).
		Argv: []string{stream, "-connect", peerIP + ":7000", "-status", filepath.Join(e.dir, "sender.send"), "-rate", "4M"},
	}}}
	for _, s := range []coordinator.JobSpec{peer, sender} {
		if err := e.c.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	peerRecv := filepath.Join(e.dir, "peer.recv")
	waitStatus(t, peerRecv, 1<<20, "stream to the outside peer")
	// Black-hole the peer: its packets are dropped from now on. The sender
	// must hold bytes towards it that stay un-acknowledged, or there is
	// nothing to refuse. If the lock still fell while the peer's receive
	// window was closed (its reader stalled), no window update reaches the
	// sender and it never sends again: open the black hole until the stream
	// flows, and close it again.
	peerRef, senderRef := agentapi.NodeRef{Job: "peer", Node: "n0"}, agentapi.NodeRef{Job: "sender", Node: "n0"}
	for attempt := 1; ; attempt++ {
		if err := e.agents["h2"].Lock(ctx, peerRef); err != nil {
			t.Fatal(err)
		}
		if e.awaitUnacked(senderRef, e.agents["h1"], peerIP+":7000") {
			break
		}
		if attempt == 10 {
			t.Fatalf("the sender's window to the peer was closed at each of %d locks", attempt)
		}
		if err := e.agents["h2"].Unlock(ctx, peerRef); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, peerRecv, readStatus(peerRecv)+64<<10, "stream after the black hole opened again")
	}
	_, err := e.c.Checkpoint(ctx, "sender", coordinator.CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "drain") || !strings.Contains(err.Error(), peerIP+":7000") {
		t.Fatalf("checkpoint with a black-holed outside peer: %v", err)
	}
	t.Logf("aborted as expected: %v", err)
	if j, _ := e.c.Job("sender"); j.State != coordinator.StateRunning {
		t.Fatalf("sender job is %s after the aborted checkpoint", j.State)
	}
	if err := e.agents["h2"].Unlock(ctx, peerRef); err != nil {
		t.Fatal(err)
	}
	// The sender retransmits at its next back-off, up to about as long again
	// as the peer was black-holed: waitStatus's clock starts at the unlock.
	waitStatus(t, peerRecv, readStatus(peerRecv)+1<<20, "stream after the abort")
}

// waitStatus waits until a tcpstream status file counts more than n bytes.
func waitStatus(t *testing.T, path string, n uint64, what string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for readStatus(path) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: stuck at %d bytes, want more than %d", what, readStatus(path), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// awaitUnacked waits until the job-node's socket to remote has had
// un-acknowledged bytes for a whole drain attempt, and reports true. It
// reports false when the socket has nothing in flight and bytes it does not
// send: the peer's window is closed, and under a black hole it stays so.
func (e *e2e) awaitUnacked(ref agentapi.NodeRef, a *Agent, remote string) bool {
	e.t.Helper()
	n, err := a.get(ref)
	if err != nil {
		e.t.Fatal(err)
	}
	sbNet, err := n.sb.OpenNet()
	if err != nil {
		e.t.Fatal(err)
	}
	defer sbNet.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		rep, err := netquiesce.Drain(ctx, netquiesce.DrainTarget{Net: sbNet}, netquiesce.DrainOptions{})
		cancel()
		var te *netquiesce.DrainTimeoutError
		switch {
		case errors.As(err, &te):
			for _, s := range te.Pending {
				if s.Remote.String() == remote {
					return true
				}
			}
		case err != nil:
			e.t.Fatal(err)
		default: // every byte sent is acknowledged
			for _, s := range rep.Sockets {
				if s.Remote.String() == remote && s.SendQueue > 0 {
					e.t.Logf("%s/%s holds bytes it does not send: %v", ref.Job, ref.Node, s)
					return false
				}
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s/%s never held un-acknowledged bytes towards %s", ref.Job, ref.Node, remote)
		}
	}
}

func readStatus(path string) uint64 {
	data, _ := os.ReadFile(path)
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(f[0], 10, 64)
	return n
}
