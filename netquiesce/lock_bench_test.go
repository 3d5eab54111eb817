package netquiesce

import (
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// BenchmarkLockUnlock measures Lock and Unlock on an attached TCX lock of a
// veth in a fresh namespace, and reports each as ns/lock and ns/unlock.
// Unlock includes reading the 8 per-CPU counters.
func BenchmarkLockUnlock(b *testing.B) {
	testutil.RequireRoot(b, "creates network namespaces, cgroups and eBPF programs")
	for _, mode := range []Mode{ModeTCX, ModeCgroupSKB} {
		b.Run(mode.String(), func(b *testing.B) {
			var t Target
			switch mode {
			case ModeTCX:
				n := newTestNet(b, "bench")
				other := newTestNet(b, "benchpeer")
				must(b, AddVeth(VethEnd{Net: n, Name: "eth0"}, VethEnd{Net: other, Name: "eth0"}))
				t = Target{Net: n, Interface: "eth0"}
			case ModeCgroupSKB:
				t = Target{Cgroup: newTestCgroup(b)}
			}
			lk, err := Attach(t, Options{Mode: mode})
			must(b, err)
			b.Cleanup(func() { lk.Close() })
			var lockT, unlockT time.Duration
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				if _, err := lk.Lock(); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := lk.Unlock(); err != nil {
					b.Fatal(err)
				}
				lockT += t1.Sub(t0)
				unlockT += time.Since(t1)
			}
			b.ReportMetric(float64(lockT.Nanoseconds())/float64(b.N), "ns/lock")
			b.ReportMetric(float64(unlockT.Nanoseconds())/float64(b.N), "ns/unlock")
		})
	}
}
