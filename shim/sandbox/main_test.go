package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// tcpstreamBin is the workload binary, built once by TestMain (as root only).
var tcpstreamBin string

func TestMain(m *testing.M) {
	MaybeRunInit()
	os.Exit(run(m))
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
