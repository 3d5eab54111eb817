package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"

	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// besideCases are BenchmarkDumpBeside's cases, in the order each round
// runs them.
var besideCases = []string{"alone", "hasher", "busy", "busy-idle", "busy-int"}

// BenchmarkDumpBeside measures what work beside CRIU costs CRIU. Each of
// b.N rounds dumps the same tree (two processes of 8 MiB, frozen as a
// shim freezes a job-node, left running) once per case, in turn:
//   - alone;
//   - hasher: with the stream hasher following the memory images as a
//     shim's dump runs it (catalog.StartStreamHasher; Finish after CRIU);
//   - busy: beside a thread that hashes a buffer in memory (BLAKE3, the
//     hasher's work without its files);
//   - busy-idle: the same thread at SCHED_IDLE;
//   - busy-int: a thread in a loop of dependent multiplications, which
//     needs a CPU but hardly any of what it shares (caches, memory).
//
// It reports each case's median CRIU time (ms-<case>) and its median
// difference to alone in the same round (ms-more-<case>).
//
//	go test -run '^$' -bench DumpBeside -benchtime 24x ./shim/sandbox
func BenchmarkDumpBeside(b *testing.B) {
	e := newEnv(b, 1)
	s := e.sandbox(1, 1, false)
	e.startHogs(s, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	took := map[string][]time.Duration{}
	for r := 0; b.Loop(); r++ {
		for _, c := range besideCases {
			dir := filepath.Join(e.dir, fmt.Sprintf("%s-%d", c, r))
			d, err := dumpBeside(ctx, e, s, dir, c)
			if err != nil {
				b.Fatalf("%s: %v", c, err)
			}
			took[c] = append(took[c], d)
			if err := os.RemoveAll(dir); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportCases(b, besideCases, took)
}

// reportCases reports each case's median time (ms-<case>) and, but for
// "alone", its median difference to "alone" in the same round
// (ms-more-<case>).
func reportCases(b *testing.B, cases []string, took map[string][]time.Duration) {
	for _, c := range cases {
		more := make([]time.Duration, len(took[c]))
		for i, d := range took[c] {
			more[i] = d - took["alone"][i]
		}
		b.ReportMetric(ms(median(took[c])), "ms-"+c)
		if c != "alone" {
			b.ReportMetric(ms(median(more)), "ms-more-"+c)
		}
	}
}

// busySink keeps the multiplications from being optimised away.
var busySink atomic.Uint64

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// dumpBeside freezes s, dumps it into dir with what case c puts beside
// CRIU, thaws it, and returns CRIU's time.
func dumpBeside(ctx context.Context, e *env, s *Sandbox, dir, c string) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	if err := s.Freeze(ctx); err != nil {
		return 0, err
	}
	defer s.Thaw(ctx)
	var h *catalog.StreamHasher
	switch c {
	case "hasher":
		h = catalog.StartStreamHasher(dir, criu.IsPages)
		defer h.Stop()
	case "busy", "busy-idle", "busy-int":
		stop := startBusy(c == "busy-idle", c == "busy-int")
		defer stop()
	}
	res, err := s.Dump(ctx, e.drv, criu.Options{ImagesDir: dir, LeaveRunning: true, TCPEstablished: true, FileLocks: true, LinkRemap: true,
		// The log outside the images, as a shim keeps it.
		WorkDir: dir + ".work"})
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir + ".work")
	if h != nil {
		if _, err := h.Finish(ctx); err != nil {
			return 0, err
		}
	}
	return res.Elapsed, nil
}

// startBusy starts a thread that hashes a buffer in memory over and over,
// or multiplies if mul, at SCHED_IDLE if idle; stop ends it.
func startBusy(idle, mul bool) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		// The thread's policy goes with it: it exits with the goroutine.
		runtime.LockOSThread()
		if idle {
			_ = unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}, 0)
		}
		buf := make([]byte, 1<<20)
		x := uint64(1)
		for {
			select {
			case <-quit:
				busySink.Store(x)
				return
			default:
			}
			if mul {
				for range 1 << 20 {
					x = x*6364136223846793005 + 1442695040888963407
				}
				continue
			}
			h := blake3.New(32, nil)
			h.Write(buf)
			h.Sum(nil)
		}
	}()
	return func() { close(quit); <-done }
}

// restoreCases are BenchmarkRestoreBeside's cases, in the order each round
// runs them.
var restoreCases = []string{"alone", "beside", "first"}

// BenchmarkRestoreBeside measures what a restart's verification of the
// memory images costs a restore. The tree (two processes of 8 MiB) is
// dumped once; each of b.N rounds restores it from those images once per
// case, in turn, and dumps it again elsewhere (untimed) to restore again:
//   - alone: CRIU's restore only;
//   - beside: the memory images verified against a node manifest while
//     CRIU restores, as a shim does (catalog.NodeImages.Verify of the
//     pages-*.img), until both are done;
//   - first: the same verification, then the restore.
//
// It reports each case's median time (ms-<case>: CRIU's for alone, until
// both are done for the others), its median difference to alone in the
// same round (ms-more-<case>), and beside's CRIU time alone
// (ms-criu-beside).
//
//	go test -run '^$' -bench RestoreBeside -benchtime 24x ./shim/sandbox
func BenchmarkRestoreBeside(b *testing.B) {
	e := newEnv(b, 1)
	s := e.sandbox(1, 1, false)
	e.startHogs(s, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	opts := func(dir string) criu.Options {
		return criu.Options{ImagesDir: dir, TCPEstablished: true, FileLocks: true, LinkRemap: true, WorkDir: dir + ".work"}
	}
	imgDir := filepath.Join(e.dir, "images")
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Dump(ctx, e.drv, opts(imgDir)); err != nil {
		b.Fatal(err)
	}
	if _, err := catalog.WriteNodeManifest(ctx, imgDir); err != nil {
		b.Fatal(err)
	}
	sum, err := catalog.NodeManifestSHA256(imgDir)
	if err != nil {
		b.Fatal(err)
	}
	imgs, err := catalog.OpenNodeImages(imgDir, sum)
	if err != nil {
		b.Fatal(err)
	}
	defer imgs.Close()
	took := map[string][]time.Duration{}
	var criuBeside []time.Duration
	for r := 0; b.Loop(); r++ {
		for _, c := range restoreCases {
			start := time.Now()
			if c == "first" {
				if err := imgs.Verify(ctx, criu.IsPages); err != nil {
					b.Fatal(err)
				}
			}
			verified := make(chan error, 1)
			if c == "beside" {
				go func() { verified <- imgs.Verify(ctx, criu.IsPages) }()
			} else {
				verified <- nil
			}
			res, err := s.Restore(ctx, e.drv, opts(imgDir))
			if err != nil {
				b.Fatalf("%s: %v", c, err)
			}
			if err := <-verified; err != nil {
				b.Fatalf("%s: %v", c, err)
			}
			d := time.Since(start)
			switch c {
			case "alone":
				d = res.Elapsed
			case "beside":
				criuBeside = append(criuBeside, res.Elapsed)
			}
			took[c] = append(took[c], d)
			// Back to Dumped for the next restore, into a scratch directory.
			again := filepath.Join(e.dir, fmt.Sprintf("again-%s-%d", c, r))
			if err := os.MkdirAll(again, 0o700); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Dump(ctx, e.drv, opts(again)); err != nil {
				b.Fatalf("%s: dump again: %v", c, err)
			}
			for _, d := range []string{again, again + ".work", imgDir + ".work"} {
				if err := os.RemoveAll(d); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	reportCases(b, restoreCases, took)
	b.ReportMetric(ms(median(criuBeside)), "ms-criu-beside")
}
