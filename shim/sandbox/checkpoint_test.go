package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/shim/criu"
)

const readRate = "16M" // slow reader: both socket queues stay full

func lockAll(t *testing.T, ss ...*Sandbox) {
	t.Helper()
	for _, s := range ss {
		if err := s.LockNetwork(); err != nil {
			t.Fatal(err)
		}
	}
}

func unlockAll(t *testing.T, ss ...*Sandbox) {
	t.Helper()
	for _, s := range ss {
		if err := s.UnlockNetwork(); err != nil {
			t.Fatal(err)
		}
	}
}

// dumpAll dumps sandboxes in parallel, as the shims of a job do.
func dumpAll(t *testing.T, e *env, leaveRunning bool, ss []*Sandbox, dirs []string) []criu.DumpResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res := make([]criu.DumpResult, len(ss))
	errs := make([]error, len(ss))
	var wg sync.WaitGroup
	for i := range ss {
		wg.Go(func() { res[i], errs[i] = ss[i].Dump(ctx, e.drv, streamOpts(dirs[i], leaveRunning)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return res
}

func restoreOne(t *testing.T, e *env, s *Sandbox, dir string) criu.RestoreResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := s.Restore(ctx, e.drv, streamOpts(dir, false))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// logResets logs the TCP reset counters of sandboxes' namespaces. A
// namespace a tree was restored into counts one reset per restored
// connection, sent while the network lock held (never delivered: the stream
// would break).
func logResets(t *testing.T, ss ...*Sandbox) {
	t.Helper()
	for _, s := range ss {
		c := tcpCounters(t, s.Pid())
		t.Logf("%s: OutRsts=%d EstabResets=%d RetransSegs=%d", s.Name(), c["OutRsts"], c["EstabResets"], c["RetransSegs"])
	}
}

// checkNoResets fails if a sandbox's namespace sent or saw a TCP reset: for
// peers that were never restored.
func checkNoResets(t *testing.T, ss ...*Sandbox) {
	t.Helper()
	for _, s := range ss {
		c := tcpCounters(t, s.Pid())
		if c["OutRsts"] != 0 || c["EstabResets"] != 0 {
			t.Errorf("%s: TCP resets seen: OutRsts=%d EstabResets=%d", s.Name(), c["OutRsts"], c["EstabResets"])
		}
	}
}

// TestStreamDumpRestoreRounds: two sandboxes on two hosts stream with data in
// flight; 20 times both are dumped (stop) and restored, alternating the
// restore order; the receiver verifies every byte throughout.
func TestStreamDumpRestoreRounds(t *testing.T) {
	const rounds = 20
	e := newEnv(t, 2)
	a, b, st, verified := e.streamingPair(1 << 20) // a receives, b sends
	checkTree(t, a, "node1")
	nsRecv, nsSend := innerPid(t, childOf(t, a.Pid())), innerPid(t, childOf(t, b.Pid()))

	var dumps, restores, frozen []time.Duration
	var imageBytes int64
	ss := []*Sandbox{a, b}
	for r := 0; r < rounds; r++ {
		dirs := []string{e.images(fmt.Sprintf("r%d-a", r)), e.images(fmt.Sprintf("r%d-b", r))}
		lockAll(t, a, b)
		res := dumpAll(t, e, false, ss, dirs)
		for i, s := range ss {
			if s.State() != Dumped || s.Pid() != 0 {
				t.Fatalf("round %d: %s is %s (pid %d) after a stop dump", r, s.Name(), s.State(), s.Pid())
			}
			dumps = append(dumps, res[i].Elapsed)
			frozen = append(frozen, res[i].Stats.FrozenTime)
			imageBytes += res[i].Stats.ImageBytes
		}
		atDump, err := readStatus(st.recvStat)
		if err != nil {
			t.Fatal(err)
		}
		order := []int{0, 1}
		if r%2 == 1 {
			order = []int{1, 0}
		}
		for _, i := range order {
			restores = append(restores, restoreOne(t, e, ss[i], dirs[i]).Elapsed)
		}
		unlockAll(t, a, b)
		verified = e.waitVerified(st, max(verified, atDump)+256<<10, 15*time.Second)
		for _, d := range dirs { // keep /tmp small: images are checked, not kept
			os.RemoveAll(d)
		}
	}
	checkTree(t, a, "node1")
	checkTree(t, b, "node2")
	if got := innerPid(t, childOf(t, a.Pid())); got != nsRecv {
		t.Errorf("receiver namespace pid %s after restores, was %s", got, nsRecv)
	}
	if got := innerPid(t, childOf(t, b.Pid())); got != nsSend {
		t.Errorf("sender namespace pid %s after restores, was %s", got, nsSend)
	}
	logResets(t, a, b)
	sent, _ := readStatus(st.sendStat)
	t.Logf("%d rounds: receiver verified %d bytes (sender wrote %d); dump median %v, restore median %v, frozen median %v, images %.1f MiB/round",
		rounds, verified, sent, median(dumps), median(restores), median(frozen), float64(imageBytes)/rounds/(1<<20))
}

// TestLeaveRunningDump: a checkpoint with leave-running does not disturb the
// stream; later both images restore (on swapped hosts) and the stream goes on
// from the checkpoint, verified.
func TestLeaveRunningDump(t *testing.T) {
	e := newEnv(t, 2)
	a, b, st, _ := e.streamingPair(1 << 20)
	dirs := []string{e.images("a"), e.images("b")}
	lockAll(t, a, b)
	dumpAll(t, e, true, []*Sandbox{a, b}, dirs)
	atCkpt, err := readStatus(st.recvStat)
	if err != nil {
		t.Fatal(err)
	}
	unlockAll(t, a, b)
	after := e.waitVerified(st, atCkpt+4<<20, 15*time.Second)
	if a.State() != Running || b.State() != Running {
		t.Fatalf("after a leave-running dump: %s %s", a.State(), b.State())
	}
	logResets(t, a, b)
	t.Logf("stream went on after the checkpoint: %d -> %d bytes verified", atCkpt, after)

	// Later: the job is gone, the checkpoint is restored elsewhere.
	ctx := context.Background()
	for _, s := range []*Sandbox{a, b} {
		if err := s.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a2 := e.sandbox(2, 1, true)
	b2 := e.sandbox(1, 2, true)
	restoreOne(t, e, b2, dirs[1])
	restoreOne(t, e, a2, dirs[0])
	unlockAll(t, a2, b2)
	// The receiver restarts from the checkpoint's count and continues.
	got := e.waitVerified(st, after+4<<20, 20*time.Second)
	checkTree(t, a2, "node1")
	logResets(t, a2, b2)
	t.Logf("restored checkpoint streamed on to %d bytes verified", got)
}

// TestMigration: dump one sandbox, destroy it, restore it on a third host with
// the same floating address; the peer never moved.
func TestMigration(t *testing.T) {
	e := newEnv(t, 3)
	a, b, st, _ := e.streamingPair(1 << 20)
	nsRecv := innerPid(t, childOf(t, a.Pid()))
	ctx := context.Background()
	dir := e.images("a")
	lockAll(t, a, b)
	res := dumpAll(t, e, false, []*Sandbox{a}, []string{dir})
	if err := a.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	atDump, err := readStatus(st.recvStat)
	if err != nil {
		t.Fatal(err)
	}
	a3 := e.sandbox(3, 1, true)
	rr := restoreOne(t, e, a3, dir)
	unlockAll(t, a3, b)
	got := e.waitVerified(st, atDump+4<<20, 20*time.Second)
	checkTree(t, a3, "node1")
	if ns := innerPid(t, childOf(t, a3.Pid())); ns != nsRecv {
		t.Errorf("receiver namespace pid %s on host 3, was %s", ns, nsRecv)
	}
	logResets(t, a3)
	checkNoResets(t, b)
	t.Logf("migrated receiver h1 -> h3: dump %v, restore %v; verified %d -> %d bytes", res[0].Elapsed, rr.Elapsed, atDump, got)
}

// TestDumpStats256MiB: a 2-process tree holding 256 MiB; the parsed stats
// report dump time and image size.
func TestDumpStats256MiB(t *testing.T) {
	e := newEnv(t, 1)
	s := e.sandbox(1, 1, false)
	e.startHogs(s, 128)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := e.images("hog")
	res, err := s.Dump(ctx, e.drv, criu.Options{ImagesDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st := res.Stats
	t.Logf("256 MiB tree: dump %v (CRIU: frozen %v, freezing %v, memdump %v, memwrite %v), pages scanned %d written %d, images %.1f MiB",
		res.Elapsed, st.FrozenTime, st.FreezingTime, st.MemdumpTime, st.MemwriteTime, st.PagesScanned, st.PagesWritten, float64(st.ImageBytes)/(1<<20))
	if st.PagesWritten < 256<<20/4096 || st.ImageBytes < 256<<20 {
		t.Fatalf("stats report %d pages, %d bytes; want >= 256 MiB", st.PagesWritten, st.ImageBytes)
	}
	if st.FrozenTime <= 0 || st.MemdumpTime <= 0 || st.MemwriteTime <= 0 {
		t.Fatalf("stats lack times: %+v", st)
	}
	rr, err := s.Restore(ctx, e.drv, criu.Options{ImagesDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("256 MiB tree: restore %v (CRIU: forking %v, restore %v, pages restored %d)",
		rr.Elapsed, rr.Stats.ForkingTime, rr.Stats.RestoreTime, rr.Stats.PagesRestored)
	if s.State() != Running {
		t.Fatalf("after restore: %s", s.State())
	}
}

// TestRestoreTruncatedImage: a damaged image makes Restore fail with CRIU's
// error line and the log path, and leaves nothing running. A truncated pages
// image makes CRIU 4.2.1's restorer spin on a zero-length read instead of
// failing: there the context deadline must end it.
func TestRestoreTruncatedImage(t *testing.T) {
	e := newEnv(t, 2)
	a, b, st, _ := e.streamingPair(1 << 20)
	dir := e.images("a")
	lockAll(t, a, b)
	dumpAll(t, e, false, []*Sandbox{a}, []string{dir})
	copyDir := func(name string) string {
		d := e.images(name)
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range ents {
			b, err := os.ReadFile(filepath.Join(dir, en.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, en.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	// truncate cuts path to size(its size).
	truncate := func(path string, size func(int64) int64) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, size(fi.Size())); err != nil {
			t.Fatal(err)
		}
	}
	checkClean := func() {
		t.Helper()
		if a.State() != Dumped {
			t.Fatalf("sandbox is %s after a failed restore, want dumped", a.State())
		}
		if ev, err := a.Cgroup().Events(); err != nil || ev.Populated {
			t.Fatalf("cgroup populated after a failed restore: %+v %v", ev, err)
		}
	}

	t.Run("metadata", func(t *testing.T) {
		d := copyDir("bad-pstree")
		// The last entry loses a byte. Cut at half, the image could end
		// between two entries, a valid image of a smaller tree: with the
		// init's entry small (one thread), restoring just the init
		// succeeded.
		truncate(filepath.Join(d, "pstree.img"), func(n int64) int64 { return n - 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := a.Restore(ctx, e.drv, streamOpts(d, false))
		if err == nil {
			t.Fatal("restore from a truncated image succeeded")
		}
		var ce *criu.Error
		if !errors.Is(err, criu.ErrFailed) || !errors.As(err, &ce) {
			t.Fatalf("error %v is not a *criu.Error", err)
		}
		if !strings.HasPrefix(ce.Line, "Error (") || ce.LogPath != filepath.Join(d, "restore.log") {
			t.Fatalf("error lacks the CRIU line or log path: %+v", ce)
		}
		if _, serr := os.Stat(ce.LogPath); serr != nil {
			t.Fatalf("log not kept: %v", serr)
		}
		for _, want := range []string{ce.Line, ce.LogPath} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not contain %q", err, want)
			}
		}
		t.Logf("restore error: %v", err)
		checkClean()
	})
	t.Run("pages/deadline", func(t *testing.T) {
		d := copyDir("bad-pages")
		pages, _ := filepath.Glob(filepath.Join(d, "pages-*.img"))
		if len(pages) == 0 {
			t.Fatal("no pages image")
		}
		for _, p := range pages {
			truncate(p, func(n int64) int64 { return n / 2 })
		}
		const deadline = 3 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		_, err := a.Restore(ctx, e.drv, streamOpts(d, false))
		if err == nil {
			t.Fatal("restore from truncated pages succeeded")
		}
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, criu.ErrFailed) {
			t.Fatalf("error %v: want a CRIU failure caused by the deadline", err)
		}
		// CRIU is killed at the deadline, then the tree it left is killed
		// and waited for: a second on a loaded machine, not a spin.
		if el := time.Since(start); el > deadline+10*time.Second {
			t.Fatalf("restore returned %v after its %v deadline", el, deadline)
		}
		t.Logf("restore error: %.300s", err)
		checkClean()
	})
	// The good images still restore, and the stream goes on.
	atDump, err := readStatus(st.recvStat)
	if err != nil {
		t.Fatal(err)
	}
	restoreOne(t, e, a, dir)
	unlockAll(t, a, b)
	e.waitVerified(st, atDump+1<<20, 20*time.Second)
}
