package agent

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
)

// warmPid waits until the CRIU started ahead for n's next dump is ready and
// returns its PID (0 if there is none).
func warmPid(a *Agent, ref agentapi.NodeRef) int {
	a.mu.Lock()
	n := a.nodes[key(ref.Job, ref.Node)]
	a.mu.Unlock()
	n.awaitCRIU(context.Background())
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.criu == nil {
		return 0
	}
	return n.criu.Pid()
}

// TestDumpCRIUStartedAhead: Freeze starts the CRIU of the dump that
// follows, and the dump runs that CRIU; the thaw after it starts the next
// one, and so does the thaw after a restore; Destroy ends and reaps it.
func TestDumpCRIUStartedAhead(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	a, ref := h.startTicker(ctx, filepath.Join(t.TempDir(), "stop"))
	var ran []int
	a.criuStarted = func(op string, pid int) { ran = append(ran, pid) }
	waitTicks(t, a, "job", "n0", 2)
	if p := warmPid(a, ref); p != 0 {
		t.Fatalf("a CRIU (%d) was started before any checkpoint began", p)
	}
	img := filepath.Join(t.TempDir(), "img")
	for i := range 2 {
		mustOK(t, "freeze", a.Freeze(ctx, ref))
		ahead := warmPid(a, ref)
		if ahead == 0 {
			t.Fatalf("dump %d: no CRIU was started ahead (by Freeze or the last thaw)", i)
		}
		mustOK(t, "lock", a.Lock(ctx, ref))
		_, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, LeaveRunning: true, Checkpoint: "job/1"})
		mustOK(t, "dump", err)
		if len(ran) != i+1 || ran[i] != ahead {
			t.Fatalf("dump %d ran CRIU %v, want the one started ahead, %d", i, ran, ahead)
		}
		mustOK(t, "unlock", a.Unlock(ctx, ref))
		mustOK(t, "thaw", a.Thaw(ctx, ref))
	}
	next := warmPid(a, ref)
	if next == 0 || next == ran[len(ran)-1] {
		t.Fatalf("after a checkpoint's thaw the next dump's CRIU is %d (the last ran %d)", next, ran[len(ran)-1])
	}
	mustOK(t, "suspend freeze", a.Freeze(ctx, ref))
	mustOK(t, "suspend lock", a.Lock(ctx, ref))
	_, err := a.Dump(ctx, ref, agentapi.DumpRequest{Dir: img, Checkpoint: "job/2"})
	mustOK(t, "suspend dump", err)
	if ran[len(ran)-1] != next {
		t.Fatalf("the suspend's dump ran CRIU %d, want %d", ran[len(ran)-1], next)
	}
	if p := warmPid(a, ref); p != 0 {
		t.Fatalf("after a dump that ended the tree a CRIU (%d) waits for another dump", p)
	}
	mustOK(t, "destroy", a.Destroy(ctx, ref))

	// Started again from the suspend's images: the restore ran one more
	// CRIU; the thaw starts the next dump's, and Destroy ends it.
	mustOK(t, "restore", a.Restore(ctx, "job", tickerSpec("n0", 1, filepath.Join(t.TempDir(), "stop")),
		agentapi.RestoreRequest{Dir: img, Checkpoint: "job/2"}))
	if len(ran) != 4 {
		t.Fatalf("CRIU runs %v, want 4 (the restore's fourth)", ran)
	}
	mustOK(t, "unlock", a.Unlock(ctx, ref))
	mustOK(t, "thaw", a.Thaw(ctx, ref))
	left := warmPid(a, ref)
	if left == 0 {
		t.Fatal("the thaw after the restore started no CRIU ahead")
	}
	mustOK(t, "destroy", a.Destroy(ctx, ref))
	if err := syscall.Kill(left, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the CRIU started ahead (%d) outlived Destroy (kill 0: %v)", left, err)
	}
}
