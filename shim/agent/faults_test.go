package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// assertNodeGone fails unless nothing of job-node ref is left: no job-node in
// the agent, no record, no namespace, no cgroup, no process.
func assertNodeGone(t *testing.T, h *oneHost, a *Agent, ref agentapi.NodeRef) {
	t.Helper()
	if _, err := a.Status(context.Background(), ref); !errors.Is(err, ErrNoNode) {
		t.Fatalf("status of %s/%s: %v, want ErrNoNode", ref.Job, ref.Node, err)
	}
	if _, err := os.Stat(a.recordPath(ref.Job, ref.Node)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record of %s/%s left: %v", ref.Job, ref.Node, err)
	}
	ns := filepath.Join("/run/netns", a.netnsName(ref.Job, ref.Node))
	if _, err := os.Stat(ns); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("namespace %s left: %v", ns, err)
	}
	cg := filepath.Join(h.cgDir, "h1", ref.Job, ref.Node)
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cgroup %s left: %v", cg, err)
	}
}

// dumpedTicker starts job-node job/n0 (a ticker) on a, lets it tick, dumps
// it as a checkpoint does (frozen, locked, left running) as job/1, and
// destroys it: the images are left for a restore.
func dumpedTicker(t *testing.T, a *Agent) (ref agentapi.NodeRef, spec agentapi.NodeSpec, img string) {
	t.Helper()
	ctx := context.Background()
	ref = agentapi.NodeRef{Job: "job", Node: "n0"}
	spec = tickerSpec("n0", 1, filepath.Join(t.TempDir(), "stop"))
	mustOK(t, "start", a.Start(ctx, "job", spec))
	waitTicks(t, a, "job", "n0", 2)
	mustOK(t, "freeze", a.Freeze(ctx, ref))
	mustOK(t, "lock", a.Lock(ctx, ref))
	img = filepath.Join(t.TempDir(), ref.Node) // the node manifest is named after its directory
	_, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, LeaveRunning: true, Checkpoint: "job/1"})
	mustOK(t, "dump", err)
	mustOK(t, "destroy", a.Destroy(ctx, ref))
	return ref, spec, img
}

// TestRestoreCancelled: a Restore whose context ends before it returned
// (before it began, while CRIU restores, after CRIU restored) fails with the
// context's error and leaves nothing of the job-node; a Restore that is let
// finish then works from the same images.
func TestRestoreCancelled(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a := h.agent(nil)
	ref, spec, img := dumpedTicker(t, a)

	for _, tc := range []struct {
		name string
		arm  func(cancel context.CancelFunc)
	}{
		{"before", func(cancel context.CancelFunc) { cancel() }},
		{"while CRIU restores", func(cancel context.CancelFunc) {
			// CRIU holds the restored, stopped tree until this returns;
			// the cancel kills it there.
			a.criuEvent = func(op string, ev criu.Event) {
				if op == "restore" && ev == criu.EventPostRestore {
					cancel()
				}
			}
		}},
		{"after CRIU restored", func(cancel context.CancelFunc) { a.afterRestore = cancel }},
	} {
		rctx, cancel := context.WithCancel(ctx)
		tc.arm(cancel)
		err := a.Restore(rctx, "job", spec, agentapi.RestoreRequest{Dir: img, Checkpoint: "job/1"})
		cancel()
		a.criuEvent, a.afterRestore = nil, nil
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: restore returned %v, want context.Canceled", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
		assertNodeGone(t, h, a, ref)
	}
	mustOK(t, "restore", a.Restore(ctx, "job", spec, agentapi.RestoreRequest{Dir: img, Checkpoint: "job/1"}))
	resumeThenDestroy(t, a, ref)
}

// TestShimExitInDump: with fault.ShimExitInDump the shim kills itself while
// CRIU holds the dumped tree (Agent.selfKill, replaced here: the test cannot die),
// every time. The job-node is then adopted by the next shim and rolled back
// (unlock, thaw) as the coordinator does: it runs on.
func TestShimExitInDump(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	ref := agentapi.NodeRef{Job: "job", Node: "n0"}
	var criuPid int
	killed := make(chan string, 1)
	a := h.agent(func(c *Config) { c.Faults = fault.Set{fault.ShimExitInDump: true} })
	img := filepath.Join(t.TempDir(), "img")
	a.selfKill = func() {
		// What a real shim leaves behind at this moment: CRIU alive with
		// every image written, the tree frozen by the dump guard.
		killed <- strikeState(a, ref, criuPid, img)
	}
	a.criuStarted = func(op string, pid int) { criuPid = pid }
	mustOK(t, "start", a.Start(ctx, "job", tickerSpec("n0", 1, filepath.Join(t.TempDir(), "stop"))))
	waitTicks(t, a, "job", "n0", 2)
	mustOK(t, "freeze", a.Freeze(ctx, ref))
	mustOK(t, "lock", a.Lock(ctx, ref))
	_, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, LeaveRunning: true, Checkpoint: "job/1"})
	select {
	case state := <-killed:
		if state != strikeWant {
			t.Fatalf("the shim killed itself when %s, want %s", state, strikeWant)
		}
		t.Logf("the shim killed itself during the dump: %s", state)
	default:
		t.Fatalf("fault shim-exit-in-dump did not strike during the dump (dump: %v)%s", err, criuLogTail(err))
	}
	// CRIU, answered as a real dead shim's socket would answer it, rolled
	// the dump back.
	if err == nil || !strings.Contains(err.Error(), errShimKilled.Error()) {
		t.Fatalf("dump returned %v, want it to fail with %q", err, errShimKilled)
	}
	if !strings.Contains(h.logs.String(), "FAULT INJECTION: shim-exit-in-dump") {
		t.Fatal("no loud warning before the kill")
	}
	// The shim is dead now: the next one adopts and the coordinator rolls back.
	a.Release()
	b := h.agent(nil)
	if n, err := b.Adopt(ctx); err != nil || n != 1 {
		t.Fatalf("adopt: %d, %v", n, err)
	}
	resumeThenDestroy(t, b, ref)
}

// pstreeImage is the image CRIU writes once it dumped every task.
const pstreeImage = "pstree.img"

// strikeWant is strikeState at the dump fault points' moment.
const strikeWant = "criu alive, " + pstreeImage + " written, tree frozen"

// strikeState says whether CRIU is alive, whether it wrote the image it
// writes after every task and whether the job-node's cgroup is frozen.
func strikeState(a *Agent, ref agentapi.NodeRef, criuPid int, img string) string {
	state := "criu gone"
	if err := syscall.Kill(criuPid, 0); criuPid > 0 && err == nil {
		state = "criu alive"
	}
	if _, err := os.Stat(filepath.Join(img, pstreeImage)); err == nil {
		state += ", " + pstreeImage + " written"
	}
	if on, err := a.nodes[key(ref.Job, ref.Node)].sb.Cgroup().FreezeSet(); err == nil && on {
		state += ", tree frozen"
	}
	return state
}

// TestCRIUKillInDump: with fault.CRIUKillInDump the dumping CRIU is killed
// while it holds the dumped tree, every time; Dump fails naming CRIU's death
// and its log, and the coordinator's rollback (unlock, thaw) brings the tree
// back running.
func TestCRIUKillInDump(t *testing.T) {
	const tries = 5
	h := newOneHost(t)
	ctx := context.Background()
	ref := agentapi.NodeRef{Job: "job", Node: "n0"}
	a := h.agent(func(c *Config) { c.Faults = fault.Set{fault.CRIUKillInDump: true} })
	var criuPid int
	img := ""
	struck := make(chan string, 1)
	a.killCRIU = func(pid int) error {
		struck <- strikeState(a, ref, criuPid, img)
		return killPID(pid)
	}
	a.criuStarted = func(op string, pid int) { criuPid = pid }
	spec := tickerSpec("n0", 1, filepath.Join(t.TempDir(), "stop"))
	mustOK(t, "start", a.Start(ctx, "job", spec))
	waitTicks(t, a, "job", "n0", 2)
	for i := 0; i < tries; i++ {
		mustOK(t, "freeze", a.Freeze(ctx, ref))
		mustOK(t, "lock", a.Lock(ctx, ref))
		img = filepath.Join(t.TempDir(), "img")
		_, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, LeaveRunning: true, Checkpoint: "job/x"})
		select {
		case state := <-struck:
			if state != strikeWant {
				t.Fatalf("try %d: CRIU was killed when %s, want %s", i, state, strikeWant)
			}
		default:
			t.Fatalf("try %d: fault criu-kill-in-dump did not strike (dump: %v)%s", i, err, criuLogTail(err))
		}
		if err == nil || !errors.Is(err, criu.ErrKilled) || !strings.Contains(err.Error(), "criu dump of job/n0") || !strings.Contains(err.Error(), "log: ") {
			t.Fatalf("try %d: dump returned %v, want an error naming CRIU's death, the job-node and the log", i, err)
		}
		if i == 0 {
			t.Logf("dump error: %v", err)
		}
		// CRIU had thawed the cgroup to work on its ptrace-stopped tasks;
		// its death let them go. The dump guard froze them again first.
		if on, err := a.nodes[key("job", "n0")].sb.Cgroup().FreezeSet(); err != nil || !on {
			t.Fatalf("try %d: the tree is not frozen after CRIU died (cgroup.freeze set: %v, %v)", i, on, err)
		}
		mustOK(t, "unlock", a.Unlock(ctx, ref))
		mustOK(t, "thaw", a.Thaw(ctx, ref))
		// It runs on: two more ticks after the rollback.
		waitTicks(t, a, "job", "n0", ticks(a.OutputPath("job", "n0"))+2)
		st, err := a.Status(ctx, ref)
		mustOK(t, "status", err)
		if !st.Running {
			t.Fatalf("try %d: the tree died when CRIU was killed: %+v", i, st)
		}
		if s := a.nodes[key("job", "n0")].sb.State(); s != sandbox.Running {
			t.Fatalf("try %d: sandbox %s", i, s)
		}
	}
	t.Logf("CRIU killed at %s %d times: the tree froze again and ran on every time", strikeEvent, tries)
	mustOK(t, "destroy", a.Destroy(ctx, ref))
}

// criuLogTail is the end of the CRIU log an error names, for a failure
// message ("" if it names none).
func criuLogTail(err error) string {
	var ce *criu.Error
	if !errors.As(err, &ce) || ce.LogPath == "" {
		return ""
	}
	return "\nCRIU's log ends: " + lastLines(ce.LogPath, 40)
}

// lastLines returns the last n lines of a file, joined with " | ".
func lastLines(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// resumeThenDestroy rolls a job-node back as the coordinator does (unlock,
// thaw), checks that its ticker runs again, then destroys it.
func resumeThenDestroy(t *testing.T, a *Agent, ref agentapi.NodeRef) {
	t.Helper()
	ctx := context.Background()
	mustOK(t, "unlock", a.Unlock(ctx, ref))
	mustOK(t, "thaw", a.Thaw(ctx, ref))
	waitTicks(t, a, ref.Job, ref.Node, ticks(a.OutputPath(ref.Job, ref.Node))+2)
	mustOK(t, "destroy", a.Destroy(ctx, ref))
}
