package coordinator

import (
	"context"
	"testing"
	"time"
)

type ctxKey struct{}

// TestStopBackground: background work keeps the values of the context it
// was started from but not its end, and StopBackground cancels it and waits
// for it; work that ignores the cancel is waited for only up to the grace.
func TestStopBackground(t *testing.T) {
	c, err := New(Options{StateDir: t.TempDir(), Store: newMemStore()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.events.flush) // its history is written in the background
	op, endOp := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "op"))
	started := make(chan struct{})
	got := make(chan string, 1)
	c.inBackground(op, func(ctx context.Context) {
		close(started)
		<-ctx.Done()
		got <- ctx.Value(ctxKey{}).(string)
	})
	<-started
	endOp() // the operation returned: the work goes on
	select {
	case v := <-got:
		t.Fatalf("background work ended with its operation (value %q)", v)
	case <-time.After(50 * time.Millisecond):
	}
	if !c.StopBackground(10 * time.Second) {
		t.Fatal("StopBackground: the cancelled work did not return")
	}
	if v := <-got; v != "op" {
		t.Errorf("background context lost the operation's values: %q", v)
	}

	// Work that ignores its context: the wait ends after the grace.
	c2, err := New(Options{StateDir: t.TempDir(), Store: newMemStore()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.events.flush) // its history is written in the background
	release := make(chan struct{})
	defer close(release)
	c2.inBackground(context.Background(), func(context.Context) { <-release })
	start := time.Now()
	if c2.StopBackground(100 * time.Millisecond) {
		t.Fatal("StopBackground said all work returned while some still ran")
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("StopBackground waited %v, want the grace of 100ms", d)
	}
}
