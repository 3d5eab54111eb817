package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// memcheckSpec is a job-node whose tree fills mib MiB and checks all of it
// over and over (internal/testutil/memcheck), reporting to status.
func memcheckSpec(t *testing.T, mib int, status string) agentapi.NodeSpec {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "memcheck")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(gobin, "build", "-o", bin, "github.com/torpor-hpc/torpor/internal/testutil/memcheck").CombinedOutput()
	if err != nil {
		t.Fatalf("build memcheck: %v\n%s", err, out)
	}
	spec := tickerSpec("n0", 1, "")
	spec.Argv = []string{bin, "-m", strconv.Itoa(mib), "-status", status}
	return spec
}

// memPasses is how many whole passes memcheck made over its memory; it
// fails the test on a pass that found a byte changed.
func memPasses(t *testing.T, status string) int {
	t.Helper()
	b, _ := os.ReadFile(status)
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return -1
	}
	if f[2] != "ok" {
		t.Fatalf("memcheck: %s", strings.TrimSpace(string(b)))
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

func waitPasses(t *testing.T, status string, n int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for memPasses(t, status) < n {
		if time.Now().After(deadline) {
			t.Fatalf("memcheck stuck at %d passes (want %d)", memPasses(t, status), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return memPasses(t, status)
}

// signalFillAtPostRestore makes a's next restore send sig to its lazy-pages
// daemon at CRIU's post-restore notification, and returns the daemon's PID
// once it is known. The caller clears a's hooks.
func signalFillAtPostRestore(a *Agent, sig syscall.Signal) *atomic.Int32 {
	var daemon atomic.Int32
	a.criuStarted = func(op string, pid int) {
		if op == "fill" {
			daemon.Store(int32(pid))
		}
	}
	a.criuEvent = func(op string, ev criu.Event) {
		if op == "restore" && ev == criu.EventPostRestore && daemon.Load() != 0 {
			_ = syscall.Kill(int(daemon.Load()), sig)
		}
	}
	return &daemon
}

// TestLazyRestoreFillsMemory: a restore of a job-node with more memory than
// LazyRestoreFrom has a lazy-pages daemon fill it; the tree then finds every
// byte of its 32 MiB as it was dumped, pass after pass. A daemon that dies
// before it filled the memory fails the restore and leaves nothing of the
// job-node, and the same images restore again; below the threshold (and
// with it switched off) CRIU restores the memory itself.
func TestLazyRestoreFillsMemory(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a := h.agent(nil)
	status := filepath.Join(t.TempDir(), "n0.mem")
	spec := memcheckSpec(t, 32, status)
	ref := agentapi.NodeRef{Job: "job", Node: "n0"}
	mustOK(t, "start", a.Start(ctx, "job", spec))
	waitPasses(t, status, 1)
	mustOK(t, "freeze", a.Freeze(ctx, ref))
	mustOK(t, "lock", a.Lock(ctx, ref))
	img := filepath.Join(t.TempDir(), ref.Node)
	_, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, LeaveRunning: true, Checkpoint: "job/1"})
	mustOK(t, "dump", err)
	mustOK(t, "destroy", a.Destroy(ctx, ref))
	data, err := os.ReadFile(filepath.Join(img, catalog.NodeManifestName))
	mustOK(t, "read node manifest", err)
	sum := sha256.Sum256(data)
	req := agentapi.RestoreRequest{Dir: img, Checkpoint: "job/1", NodeManifestSHA256: hex.EncodeToString(sum[:])}

	restored := func(a *Agent, wantLazy bool) {
		t.Helper()
		var fills atomic.Int32
		a.criuStarted = func(op string, _ int) {
			if op == "fill" {
				fills.Add(1)
			}
		}
		defer func() { a.criuStarted = nil }()
		mark := len(h.logs.String())
		mustOK(t, "restore", a.Restore(ctx, "job", spec, req))
		logged := h.logs.String()[mark:]
		if lazy := strings.Contains(logged, "filled_lazily=true"); lazy != wantLazy || (fills.Load() == 1) != wantLazy {
			t.Fatalf("restore filled its memory lazily: logged %v, daemons %d; want %v", lazy, fills.Load(), wantLazy)
		}
		before := memPasses(t, status)
		mustOK(t, "unlock", a.Unlock(ctx, ref))
		mustOK(t, "thaw", a.Thaw(ctx, ref))
		// Two whole passes after the restore: every byte was compared.
		waitPasses(t, status, before+2)
		mustOK(t, "destroy", a.Destroy(ctx, ref))
	}
	restored(a, true)

	t.Run("daemon dies before it filled the memory", func(t *testing.T) {
		// CRIU restored the tree without its memory and waits there.
		daemon := signalFillAtPostRestore(a, syscall.SIGKILL)
		err := a.Restore(ctx, "job", spec, req)
		a.criuStarted, a.criuEvent = nil, nil
		if daemon.Load() == 0 {
			t.Fatal("no lazy-pages daemon was started")
		}
		if err == nil || !strings.Contains(err.Error(), "lazy-pages") {
			t.Fatalf("restore with its daemon killed: %v; want it to fail on the daemon", err)
		}
		t.Logf("failed: %v", err)
		assertNodeGone(t, h, a, ref)
		memPasses(t, status) // the tree never ran with a page left zero
		if syscall.Kill(int(daemon.Load()), 0) == nil {
			t.Fatalf("the daemon %d is still there", daemon.Load())
		}
		restored(a, true)
	})
	t.Run("daemon dies after CRIU restored the tree", func(t *testing.T) {
		// It fills nothing more: the released tree's tasks wait on the
		// pages they touch.
		signalFillAtPostRestore(a, syscall.SIGSTOP)
		killed, frozen := false, ""
		a.filling = func(pid int) {
			// Nothing of the tree may run from here until every page is
			// in: a task that touched one would get a zero page now.
			b, _ := os.ReadFile(filepath.Join(h.cgDir, "h1", ref.Job, ref.Node, "cgroup.freeze"))
			frozen = strings.TrimSpace(string(b))
			killed = syscall.Kill(pid, syscall.SIGKILL) == nil
		}
		err := a.Restore(ctx, "job", spec, req)
		a.criuStarted, a.criuEvent, a.filling = nil, nil, nil
		if !killed {
			t.Fatal("the restore never waited for its daemon to fill the memory")
		}
		if frozen != "1" {
			t.Fatalf("the tree was not frozen while its daemon filled its memory (cgroup.freeze %q)", frozen)
		}
		if err == nil || !strings.Contains(err.Error(), "lazy-pages daemon filling its memory failed") {
			t.Fatalf("restore with its daemon killed: %v; want it to fail on the daemon", err)
		}
		t.Logf("failed: %v", err)
		assertNodeGone(t, h, a, ref)
		memPasses(t, status) // the tree never ran with a page left zero
		restored(a, true)
	})
	t.Run("threshold", func(t *testing.T) {
		restored(h.agent(func(c *Config) { c.LazyRestoreFrom = 64 << 20 }), false)
		restored(h.agent(func(c *Config) { c.LazyRestoreFrom = -1 }), false)
	})
}
