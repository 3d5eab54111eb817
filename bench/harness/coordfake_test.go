package harness

import (
	"context"
	"fmt"
	"testing"
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
