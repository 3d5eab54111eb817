package main

import "testing"

func TestPatternChunking(t *testing.T) {
	p := pattern{key: 42}
	whole := make([]byte, 1000)
	p.fill(whole, 5)
	for _, split := range []int{1, 3, 7, 8, 9, 500} {
		got := make([]byte, 0, len(whole))
		for off := 0; off < len(whole); off += split {
			end := min(off+split, len(whole))
			b := make([]byte, end-off)
			p.fill(b, uint64(5+off))
			got = append(got, b...)
		}
		if string(got) != string(whole) {
			t.Fatalf("split %d: stream differs", split)
		}
	}
	scratch := make([]byte, len(whole))
	if i := p.check(whole, 5, scratch); i != -1 {
		t.Fatalf("check of the right bytes = %d", i)
	}
	whole[77]++
	if i := p.check(whole, 5, scratch); i != 77 {
		t.Fatalf("check found %d, want 77", i)
	}
	if i := p.check(whole[1:], 5, scratch); i == -1 {
		t.Fatal("shifted stream (a lost byte) was accepted")
	}
}
