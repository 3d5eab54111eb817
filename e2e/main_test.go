package e2e

import (
	"os"
	"testing"

	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// TestMain lets the test binary, started again as a user the test created,
// act as a hand-made API client (see rawClient). Otherwise, as root, it
// first removes what killed runs of these tests left on the machine.
func TestMain(m *testing.M) {
	if sock := os.Getenv(rawClientEnv); sock != "" {
		os.Exit(rawClient(sock))
	}
	if os.Geteuid() == 0 {
		removeLeftovers()
	}
	code := m.Run()
	cgroup.RemoveTopIfEmpty(sandbox.DefaultCgroupParent)
	os.Exit(code)
}
