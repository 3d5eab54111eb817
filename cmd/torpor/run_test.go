package main

import (
	"testing"

	"github.com/torpor-hpc/torpor/coordinator/launch"
	"github.com/torpor-hpc/torpor/internal/embedded"
	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// launch spells out names that belong to the shim, as it must not import it.
func TestLaunchAgreesWithShim(t *testing.T) {
	if launch.SandboxIfName != sandbox.IfName {
		t.Errorf("launch.SandboxIfName = %q, but sandboxes have %q: the ranks would bind to no interface", launch.SandboxIfName, sandbox.IfName)
	}
	if launch.LocalHost != embedded.Host {
		t.Errorf("launch.LocalHost = %q, but the embedded shim's host is %q: a job without --host would not start on it", launch.LocalHost, embedded.Host)
	}
}
