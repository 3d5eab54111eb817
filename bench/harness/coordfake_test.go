package harness

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// BenchmarkCoordFake is B5's fake path (runCoordFake) as a Go benchmark, for
// pprof: go test ./bench/harness -run '^$' -bench CoordFake -cpuprofile cpu.out
func BenchmarkCoordFake(b *testing.B) {
	for _, n := range []int{16, 256} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			p := runCoordFake(context.Background(), b.TempDir(), n, 16, b.N)
			if p.Err != "" {
				b.Fatal(p.Err)
			}
			b.ReportMetric(float64(p.Wall.Median), "median-ms")
			b.ReportMetric(float64(p.Frozen.Median), "frozen-median-ms")
		})
	}
}

// TestFreshExt4 makes B5's fresh file system, checks what describeFS calls
// it and that done leaves neither the mount nor the directory behind; and
// runs the fake point on it.
func TestFreshExt4(t *testing.T) {
	testutil.RequireRoot(t, "it mounts a file system through a loop device")
	work := t.TempDir()
	mnt, done, err := freshExt4(context.Background(), work)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = done() }) // a no-op after the done below, unless the test failed before it
	if got := describeFS(mnt); got != "ext4 with a journal" {
		t.Errorf("describeFS(%s) = %q, want ext4 with a journal", mnt, got)
	}
	p := runCoordFake(context.Background(), mnt, 16, 4, 2)
	if p.Err != "" || len(p.Samples) != 2 || p.CatalogFS != "ext4 with a journal" {
		t.Errorf("fake point on the fresh ext4: err %q, %d samples, catalog_fs %q", p.Err, len(p.Samples), p.CatalogFS)
	}
	for _, s := range p.Samples {
		if s.Phases["dump"] <= 0 || s.Phases["commit"] <= 0 {
			t.Errorf("a sample without its phases: %v", s.Phases)
		}
	}
	if err := done(); err != nil {
		t.Fatal(err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+mnt+" ") {
		t.Errorf("%s still mounted after done", mnt)
	}
	if ents, err := os.ReadDir(work); err != nil || len(ents) != 0 {
		t.Errorf("work directory after done: %v entries, err %v", len(ents), err)
	}
	if got := describeFS("/dev/shm"); got != "tmpfs" {
		t.Errorf("describeFS(/dev/shm) = %q, want tmpfs", got)
	}
}
