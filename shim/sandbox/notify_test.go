package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/shim/criu"
)

// TestDumpNotifications: CRIU tells a frozen sandbox's dump of its pre-dump
// and post-dump moments and waits for each answer. At post-dump every image
// is written and the dump guard has frozen the tree again before the
// caller's hook runs; a hook that fails there fails the dump, and the tree
// stays frozen and whole: thawed, it runs on.
func TestDumpNotifications(t *testing.T) {
	e := newEnv(t, 1)
	s := e.sandbox(1, 1, false)
	out, _, _ := startTicker(t, s, e.dir)
	waitFor(t, "two ticks", 10*time.Second, func() bool { return ticks(out) >= 2 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	errRefused := errors.New("refused by the test")
	for _, fail := range []bool{false, true} {
		if err := s.Freeze(ctx); err != nil {
			t.Fatal(err)
		}
		dir := e.images(map[bool]string{false: "ok", true: "refused"}[fail])
		var events []criu.Event
		var atPostDump string
		opts := criu.Options{ImagesDir: dir, LeaveRunning: true, FileLocks: true}
		opts.Notify = func(ev criu.Event) error {
			events = append(events, ev)
			if ev != criu.EventPostDump {
				return nil
			}
			atPostDump = dumpMoment(s, dir)
			if fail {
				return errRefused
			}
			return nil
		}
		_, err := s.Dump(ctx, e.drv, opts)
		t.Logf("fail=%v: events %v; at post-dump: %s; dump: %v", fail, events, atPostDump, err)
		if !slices.Contains(events, criu.EventPreDump) || !slices.Contains(events, criu.EventPostDump) ||
			slices.Index(events, criu.EventPreDump) > slices.Index(events, criu.EventPostDump) {
			t.Fatalf("fail=%v: CRIU's notifications were %v, want pre-dump before post-dump", fail, events)
		}
		if want := "pstree.img written, tree frozen"; atPostDump != want {
			t.Fatalf("fail=%v: at post-dump: %s, want %s", fail, atPostDump, want)
		}
		if fail != (err != nil) || fail && !errors.Is(err, errRefused) {
			t.Fatalf("fail=%v: dump returned %v", fail, err)
		}
		if on, ferr := s.Cgroup().FreezeSet(); ferr != nil || !on || s.State() != Frozen {
			t.Fatalf("fail=%v: after the dump cgroup.freeze is %v (%v), sandbox %s; want frozen", fail, on, ferr, s.State())
		}
		n := ticks(out)
		if err := s.Thaw(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the tree to tick again", 10*time.Second, func() bool { return ticks(out) >= n+2 })
	}
}

// dumpMoment says whether CRIU has written pstree.img into dir and whether
// the sandbox's cgroup is frozen.
func dumpMoment(s *Sandbox, dir string) string {
	var st []string
	if _, err := os.Stat(filepath.Join(dir, "pstree.img")); err == nil {
		st = append(st, "pstree.img written")
	}
	if on, err := s.Cgroup().FreezeSet(); err == nil && on {
		st = append(st, "tree frozen")
	}
	return strings.Join(st, ", ")
}
