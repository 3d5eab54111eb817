package harness

import (
	"runtime"
	"testing"
)

// TestHashRates: the machine's BLAKE3 rates are measured, beside a busy
// CPU too where there is a second one.
func TestHashRates(t *testing.T) {
	alone, beside := hashRates()
	t.Logf("BLAKE3 %.0f MB/s alone, %.0f MB/s beside a busy CPU", alone, beside)
	if alone < 50 {
		t.Fatalf("BLAKE3 alone: %.0f MB/s", alone)
	}
	if runtime.NumCPU() > 1 && beside < 50 {
		t.Fatalf("BLAKE3 beside a busy CPU: %.0f MB/s", beside)
	}
}

// TestFaultCost: a first touch, which faults a page in, is measured and
// costs more than touching the resident page again.
func TestFaultCost(t *testing.T) {
	fault, touch := faultCost()
	t.Logf("first touch %.3f µs per page, again %.4f µs", fault, touch)
	if fault <= 0 || touch <= 0 {
		t.Fatalf("fault cost not measured: %.3f, %.4f µs", fault, touch)
	}
	if fault < 5*touch {
		t.Fatalf("a first touch (%.3f µs) should cost well above a resident one (%.4f µs)", fault, touch)
	}
}
