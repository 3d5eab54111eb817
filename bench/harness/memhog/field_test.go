package main

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestField: the grids hold smooth values near the spots and exactly the
// ambient value elsewhere (about half the cells), which sweeps keep; they
// compress, but far less than zeros would.
func TestField(t *testing.T) {
	g := newField(16)
	for i := 0; i < 3*g.rows; i++ {
		g.sweep(g.cols * 8)
	}
	amb := 0
	for _, v := range g.cur {
		if v == ambient {
			amb++
		}
	}
	share := float64(amb) / float64(len(g.cur))
	var raw bytes.Buffer
	_ = binary.Write(&raw, binary.LittleEndian, g.cur)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	ratio := float64(raw.Len()) / float64(len(enc.EncodeAll(raw.Bytes(), nil)))
	t.Logf("%.0f%% of the cells at the ambient value; zstd ratio %.2f", 100*share, ratio)
	if share < 0.3 || share > 0.7 || ratio < 1.3 || ratio > 10 {
		t.Fatalf("ambient share %.2f, zstd ratio %.2f: not the field described", share, ratio)
	}
}
