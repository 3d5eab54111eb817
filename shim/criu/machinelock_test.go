package criu

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLockMachineHandsOver: a waiter gets the lock only once its holder let
// go, and a waiter that gave up leaves the lock free for the next.
func TestLockMachineHandsOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dump.lock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	unlockA, err := lockMachine(ctx, path)
	if err != nil {
		t.Fatal(err)
	}

	// One waiter gives up while A holds the lock.
	gaveUp, stop := context.WithCancelCause(ctx)
	stopped := errors.New("the caller gave up")
	waiting := make(chan error, 1)
	go func() {
		u, err := lockMachine(gaveUp, path)
		if err == nil {
			u()
		}
		waiting <- err
	}()
	stop(stopped)
	if err := <-waiting; !errors.Is(err, stopped) || !strings.Contains(err.Error(), "wait for another CRIU dump") {
		t.Fatalf("a waiter that gave up: got %v, want the cause %q", err, stopped)
	}

	// Another waits until A lets go.
	var released time.Time
	took := make(chan time.Time, 1)
	fail := make(chan error, 1)
	go func() {
		u, err := lockMachine(ctx, path)
		if err != nil {
			fail <- err
			return
		}
		took <- time.Now()
		u()
	}()
	select {
	case <-took:
		t.Fatal("a waiter took the lock while its holder held it")
	case err := <-fail:
		t.Fatal(err)
	case <-time.After(100 * time.Millisecond):
	}
	released = time.Now()
	unlockA()
	select {
	case at := <-took:
		if at.Before(released) {
			t.Fatalf("the waiter took the lock at %v, before it was released at %v", at, released)
		}
	case err := <-fail:
		t.Fatal(err)
	}

	// The one that gave up has let go too: the lock is free.
	u, err := lockMachine(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	u()
}
