package sandbox

import (
	"context"
	"testing"
	"time"
)

func TestSmokeDumpRestore(t *testing.T) {
	e := newEnv(t, 2)
	a := e.sandbox(1, 1, false)
	b := e.sandbox(2, 2, false)
	st := e.startStream(a, b, "8M")
	n := e.waitVerified(st, 1<<20, 10*time.Second)
	t.Logf("verified %d before dump", n)
	ctx := context.Background()
	for _, s := range []*Sandbox{a, b} {
		if err := s.LockNetwork(); err != nil {
			t.Fatal(err)
		}
	}
	ia, ib := e.images("a"), e.images("b")
	ra, err := a.Dump(ctx, e.drv, streamOpts(ia, false))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Dump(ctx, e.drv, streamOpts(ib, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dump a %v %+v; b %v %+v", ra.Elapsed, ra.Stats, rb.Elapsed, rb.Stats)
	n1, _ := readStatus(st.recvStat)
	if _, err := b.Restore(ctx, e.drv, streamOpts(ib, false)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restore(ctx, e.drv, streamOpts(ia, false)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Sandbox{a, b} {
		if err := s.UnlockNetwork(); err != nil {
			t.Fatal(err)
		}
	}
	n2 := e.waitVerified(st, n1+1<<20, 10*time.Second)
	t.Logf("verified %d after restore (%d at dump)", n2, n1)
}
