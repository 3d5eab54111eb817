package pmix

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/pmix/libpmix"
)

func requireRootAndMPI(tb testing.TB) {
	tb.Helper()
	testutil.RequireRoot(tb, "Open MPI ranks run as the pmixd's uid and the multi-node test needs UTS namespaces")
	if !libpmix.Available() {
		tb.Skip("built without cgo: pmixd needs libpmix (CGO_ENABLED=1)")
	}
	if _, err := exec.LookPath("mpicc"); err != nil {
		tb.Fatalf("mpicc not found (run `make deps`): %v", err)
	}
}

// buildMPITest compiles testdata/mpitest.c once per test binary with the
// given MPI compiler wrapper (mpicc: Open MPI, mpicc.mpich: MPICH).
var (
	mpitestMu   sync.Mutex
	mpitestBins = map[string]string{}
	mpitestDir  string
)

func buildMPITest(tb testing.TB) string { return buildMPIProgram(tb, "mpicc") }

func buildMPIProgram(tb testing.TB, cc string) string {
	tb.Helper()
	mpitestMu.Lock()
	defer mpitestMu.Unlock()
	if bin, ok := mpitestBins[cc]; ok {
		return bin
	}
	if _, err := exec.LookPath(cc); err != nil {
		tb.Fatalf("%s not found (run `make deps`): %v", cc, err)
	}
	if mpitestDir == "" {
		dir, err := os.MkdirTemp("", "torpor-pmix-mpitest-")
		if err != nil {
			tb.Fatal(err)
		}
		mpitestDir = dir
	}
	src, err := filepath.Abs("testdata/mpitest.c")
	if err != nil {
		tb.Fatal(err)
	}
	out := filepath.Join(mpitestDir, "mpitest-"+cc)
	if b, err := exec.Command(cc, "-O1", "-o", out, src).CombinedOutput(); err != nil {
		tb.Fatalf("%s testdata/mpitest.c: %v\n%s", cc, err, b)
	}
	mpitestBins[cc] = out
	return out
}

// syncBuffer is an io.Writer safe for the forwarding goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	on func(line string)
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	n, err := s.b.Write(p)
	on := s.on
	s.mu.Unlock()
	if on != nil {
		for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
			on(l)
		}
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// countingUpstream counts fences and passes them to LocalUpstream.
type countingUpstream struct {
	LocalUpstream
	fences atomic.Int64
	sigs   sync.Map
}

func (c *countingUpstream) Fence(ctx context.Context, req FenceRequest) ([]byte, error) {
	c.fences.Add(1)
	c.sigs.Store(req.Signature+"#"+strconv.FormatUint(req.Seq, 10), len(req.Data))
	return c.LocalUpstream.Fence(ctx, req)
}

// childrenOf lists live or zombie processes whose parent is pid.
func childrenOf(tb testing.TB, pid int) []string {
	tb.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatalf("read /proc: %v", err)
	}
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, e.Name()+" "+s[:i+1]+" state="+f[0])
		}
	}
	return out
}

func countLines(s, sub string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}
