package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/shim/cgroup"
)

// tcpstreamBin is the workload binary, built once by TestMain (as root only).
var tcpstreamBin string

func TestMain(m *testing.M) {
	MaybeRunInit()
	maybeRunHog()
	code := run(m)
	cgroup.RemoveTopIfEmpty(DefaultCgroupParent)
	os.Exit(code)
}

func run(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "torpor-tcpstream-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		tcpstreamBin = filepath.Join(dir, "tcpstream")
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		out, err := exec.Command(gobin, "build", "-o", tcpstreamBin, "github.com/torpor-hpc/torpor/bench/workloads/tcpstream").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build tcpstream: %v\n%s", err, out)
			return 1
		}
	}
	return m.Run()
}

// Memory hog mode for TestDumpStats256MiB: the test binary, started in a
// sandbox with hogEnv=<MiB>, touches that much memory, starts one copy of
// itself doing the same, writes <ready>.<pid> files and sleeps.
const (
	hogEnv      = "_TORPOR_TEST_HOG_MIB"
	hogReadyEnv = "_TORPOR_TEST_HOG_READY"
	hogChildEnv = "_TORPOR_TEST_HOG_CHILD"
)

func maybeRunHog() {
	mib := os.Getenv(hogEnv)
	if mib == "" {
		return
	}
	var n int
	fmt.Sscan(mib, &n)
	mem := make([]byte, n<<20)
	for i := range mem { // not zero: every page is really there
		mem[i] = byte(i*7 + i>>12)
	}
	if os.Getenv(hogChildEnv) == "" {
		cmd := exec.Command("/proc/self/exe")
		cmd.Env = append(os.Environ(), hogChildEnv+"=1")
		if err := cmd.Start(); err != nil {
			os.Exit(1)
		}
	}
	_ = os.WriteFile(fmt.Sprintf("%s.%d", os.Getenv(hogReadyEnv), os.Getpid()), nil, 0o644)
	for {
		time.Sleep(time.Hour)
		runtime.KeepAlive(mem)
	}
}
