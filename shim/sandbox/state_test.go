package sandbox

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/shim/criu"
)

// TestLifecycle walks the state machine with a real tree: illegal moves are
// refused with ErrIllegalTransition, freeze really stops the stream.
func TestLifecycle(t *testing.T) {
	e := newEnv(t, 2)
	a := e.sandbox(1, 1, false)
	b := e.sandbox(2, 2, false)
	ctx := context.Background()
	illegal := func(what string, err error) {
		t.Helper()
		var te *TransitionError
		if !errors.Is(err, ErrIllegalTransition) || !errors.As(err, &te) {
			t.Fatalf("%s: error %v, want an illegal transition", what, err)
		}
	}
	illegal("freeze created", a.Freeze(ctx))
	illegal("thaw created", a.Thaw(ctx))
	illegal("kill created", a.Kill(ctx))
	_, err := a.Dump(ctx, e.drv, criu.Options{ImagesDir: e.images("x")})
	illegal("dump created", err)

	st := e.startStream(a, b, readRate)
	illegal("start running", a.Start(ctx, Process{Argv: []string{"/bin/true"}}))
	_, err = a.Restore(ctx, e.drv, criu.Options{ImagesDir: e.images("x")})
	illegal("restore running", err)
	illegal("thaw running", a.Thaw(ctx))
	n := e.waitVerified(st, 256<<10, 10*time.Second)

	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.Freeze(fctx); err != nil {
		t.Fatal(err)
	}
	if ev, _ := a.Cgroup().Events(); !ev.Frozen || a.State() != Frozen {
		t.Fatalf("after freeze: %+v %s", ev, a.State())
	}
	illegal("freeze frozen", a.Freeze(ctx))
	time.Sleep(200 * time.Millisecond) // let the last status write land
	n1, _ := readStatus(st.recvStat)
	time.Sleep(300 * time.Millisecond)
	if n2, _ := readStatus(st.recvStat); n2 != n1 {
		t.Fatalf("frozen receiver advanced %d -> %d", n1, n2)
	}
	if err := a.Thaw(fctx); err != nil {
		t.Fatal(err)
	}
	e.waitVerified(st, max(n, n1)+256<<10, 10*time.Second)

	if err := a.Kill(fctx); err != nil {
		t.Fatal(err)
	}
	if a.State() != Exited || a.Pid() == 0 {
		t.Fatalf("after kill: %s", a.State())
	}
	illegal("freeze exited", a.Freeze(ctx))
	if err := a.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Destroy(ctx); err != nil {
		t.Fatalf("second destroy: %v", err)
	}
	illegal("start destroyed", a.Start(ctx, Process{Argv: []string{"/bin/true"}}))
}

// TestDumpFrozen: the coordinator's order is freeze → lock → dump; CRIU then
// uses the sandbox's cgroup v2 freezer instead of freezing task by task.
func TestDumpFrozen(t *testing.T) {
	e := newEnv(t, 2)
	a, b, st, _ := e.streamingPair(256 << 10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range []*Sandbox{a, b} {
		if err := s.Freeze(ctx); err != nil {
			t.Fatal(err)
		}
	}
	lockAll(t, a, b)
	dirs := []string{e.images("a"), e.images("b")}
	dumpAll(t, e, true, []*Sandbox{a, b}, dirs)
	for _, s := range []*Sandbox{a, b} {
		if ev, _ := s.Cgroup().Events(); !ev.Frozen || s.State() != Frozen {
			t.Fatalf("%s after a leave-running dump of a frozen tree: %+v %s", s.Name(), ev, s.State())
		}
	}
	at, _ := readStatus(st.recvStat)
	unlockAll(t, a, b)
	for _, s := range []*Sandbox{a, b} {
		if err := s.Thaw(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e.waitVerified(st, at+1<<20, 15*time.Second)
	// And a stop dump of frozen trees, restored.
	for _, s := range []*Sandbox{a, b} {
		if err := s.Freeze(ctx); err != nil {
			t.Fatal(err)
		}
	}
	lockAll(t, a, b)
	dirs = []string{e.images("a2"), e.images("b2")}
	dumpAll(t, e, false, []*Sandbox{a, b}, dirs)
	at, _ = readStatus(st.recvStat)
	restoreOne(t, e, a, dirs[0])
	restoreOne(t, e, b, dirs[1])
	unlockAll(t, a, b)
	e.waitVerified(st, at+1<<20, 15*time.Second)
}
