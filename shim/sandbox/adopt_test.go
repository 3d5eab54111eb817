package sandbox

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitFor polls cond for up to timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ticks counts the "tick" lines of a ticker's output.
func ticks(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("tick\n"))
}

// startTicker starts a tree that prints "tick" every 0.1s and exits with 7
// once stop exists.
// bash, not dash: dash vforks its commands, and CRIU cannot seize a tree
// frozen while a vfork child has not exec'd yet (the parent waits in D state;
// the dump times out after 10 s: "Unseizable non-zombie ... state D").
func startTicker(t *testing.T, s *Sandbox, dir string) (out, exitFile, stop string) {
	t.Helper()
	out, exitFile, stop = filepath.Join(dir, "out"), filepath.Join(dir, "out.exit"), filepath.Join(dir, "stop")
	if err := os.WriteFile(exitFile, []byte("99\n"), 0o644); err != nil { // stale: Start removes it
		t.Fatal(err)
	}
	err := s.Start(context.Background(), Process{
		Argv:     []string{"/bin/bash", "-c", "while :; do echo tick; [ -e " + stop + " ] && exit 7; sleep 0.1; done"},
		Output:   out,
		ExitFile: exitFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(exitFile); err != nil || st.Size() != 0 {
		t.Fatalf("stale exit file not replaced by an empty one by Start: %v", err)
	}
	return out, exitFile, stop
}

// TestAdopt: a sandbox whose creator forgets it (a shim that died) is
// adopted with its tree running; a frozen one stays frozen until Thaw; the
// tree's exit status comes from its exit file; Destroy removes everything;
// a sandbox that is gone is reported as ErrGone.
func TestAdopt(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	orig := e.sandbox(1, 1, false)
	out, exitFile, stop := startTicker(t, orig, t.TempDir())
	waitFor(t, "first ticks", 5*time.Second, func() bool { return ticks(out) >= 2 })

	a, err := Adopt(ctx, orig.cfg, exitFile)
	if err != nil {
		t.Fatal(err)
	}
	if a.State() != Running || a.Pid() != orig.Pid() {
		t.Fatalf("adopted: state %s pid %d, want running pid %d", a.State(), a.Pid(), orig.Pid())
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.Freeze(fctx); err != nil {
		t.Fatal(err)
	}
	// Adopted again while frozen: it stays frozen.
	b, err := Adopt(ctx, orig.cfg, exitFile)
	if err != nil {
		t.Fatal(err)
	}
	if b.State() != Frozen {
		t.Fatalf("adopted a frozen sandbox: state %s", b.State())
	}
	n := ticks(out)
	time.Sleep(300 * time.Millisecond)
	if m := ticks(out); m != n {
		t.Fatalf("frozen adopted tree ticked %d -> %d", n, m)
	}
	if err := b.Thaw(fctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ticks after thaw", 5*time.Second, func() bool { return ticks(out) >= n+3 })
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "exit", 5*time.Second, func() bool { return b.State() == Exited })
	var es *ExitStatus
	if err := b.ExitErr(); !errors.As(err, &es) || es.ExitCode() != 7 || es.Unknown {
		t.Fatalf("adopted tree ended with %v, want exit status 7", err)
	}
	t.Logf("adopted tree ended: %v", b.ExitErr())

	// A tree that ended while nobody watched: adopted as Exited, status from the file.
	c, err := Adopt(ctx, orig.cfg, exitFile)
	if err != nil {
		t.Fatal(err)
	}
	if c.State() != Exited || exitCode(c.ExitErr()) != 7 {
		t.Fatalf("adopting an ended tree: %s %v", c.State(), c.ExitErr())
	}
	if err := c.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orig.NetNSPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("namespace left after destroying the adopted sandbox: %v", err)
	}
	if _, err := Adopt(ctx, orig.cfg, exitFile); !errors.Is(err, ErrGone) {
		t.Fatalf("adopting a destroyed sandbox: %v, want ErrGone", err)
	}
}

// TestAdoptKilledInit: an init killed while no shim watched leaves no exit
// file; the adopted sandbox reports the status as unknown (255).
func TestAdoptKilledInit(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	orig := e.sandbox(1, 1, false)
	out, exitFile, _ := startTicker(t, orig, t.TempDir())
	waitFor(t, "first ticks", 5*time.Second, func() bool { return ticks(out) >= 1 })
	a, err := Adopt(ctx, orig.cfg, exitFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(a.Pid(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "exit", 5*time.Second, func() bool { return a.State() == Exited })
	var es *ExitStatus
	if err := a.ExitErr(); !errors.As(err, &es) || !es.Unknown || es.ExitCode() != 255 {
		t.Fatalf("killed adopted tree ended with %v, want unknown status 255", err)
	}
	t.Logf("killed adopted tree: %v", a.ExitErr())
	if err := a.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return -1
}
