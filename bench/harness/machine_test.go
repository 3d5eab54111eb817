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
