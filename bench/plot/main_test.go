package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	base := filepath.Join(t.TempDir(), "run")
	in := `[{"name":"a","title":"A","x":"MiB","y":"ms","log_x":true,"series":[{"name":"one","points":[[16,1],[64,3]]},{"name":"empty","points":null}]},
		{"name":"none","title":"no points","series":[{"name":"empty"}]}]`
	var out bytes.Buffer
	if err := run(strings.NewReader(in), &out, base); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), base+"-a.png\n"; got != want {
		t.Fatalf("printed %q, want %q", got, want)
	}
	f, err := os.Open(base + "-a.png")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.DecodeConfig(f); err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if _, err := os.Stat(base + "-none.png"); !os.IsNotExist(err) {
		t.Fatalf("a plot without points was drawn: %v", err)
	}
}
