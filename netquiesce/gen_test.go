package netquiesce

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestGeneratedCodeUpToDate reruns the //go:generate line of gen.go into a
// temporary directory and demands the committed bpf2go output byte for byte:
// the committed objects match the C source, and generation is reproducible.
func TestGeneratedCodeUpToDate(t *testing.T) {
	for _, tool := range []string{"clang", "llvm-strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s to regenerate the eBPF objects (run `make deps`): %v", tool, err)
		}
	}
	src, err := os.ReadFile("gen.go")
	must(t, err)
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			args = strings.Fields(rest)
		}
	}
	if args == nil {
		t.Fatal("no //go:generate go tool bpf2go line in gen.go")
	}
	out := t.TempDir()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	cmd := exec.Command(gobin, append([]string{"tool", "bpf2go", "-output-dir", out}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, b)
	}
	for _, f := range []string{"quiesce_bpfel.go", "quiesce_bpfel.o"} {
		want, err := os.ReadFile(f)
		must(t, err)
		got, err := os.ReadFile(filepath.Join(out, f))
		must(t, err)
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from a fresh bpf2go run: run `go generate ./netquiesce/...` and commit", f)
		}
	}
}
