package slurm

import "testing"

func TestParseSqueue(t *testing.T) {
	uid, st, nodes, err := parseSqueue("1001|RUNNING|h[1-2]\n")
	if err != nil || uid != 1001 || st != "RUNNING" || nodes != "h[1-2]" {
		t.Fatalf("got %d %q %q %v", uid, st, nodes, err)
	}
	for _, bad := range []string{"", "1001|RUNNING", "x|RUNNING|h1", "1|R|h1\n2|R|h2"} {
		if _, _, _, err := parseSqueue(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestValidJobID(t *testing.T) {
	for _, ok := range []string{"1", "123456", "12_3", "7+1"} {
		if !validJobID(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "-1", "1 2", "1;rm", "_1", "1_", "1_2_3", "--jobs=1", "12345678901234567890123456789012345"} {
		if validJobID(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}
