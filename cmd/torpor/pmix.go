//go:build cgo

package main

import (
	"context"
	"os"

	"github.com/torpor-hpc/torpor/pmix"
	"github.com/torpor-hpc/torpor/pmix/libpmix"
)

// pmixVersion reports the libpmix version this binary is linked with.
var pmixVersion = func() (string, error) { return libpmix.Version(), nil }

// runPMIxd is PID 1's child in an MPI job-node sandbox: the ranks' PMIx
// (or PMI-1) server. The shim starts it; users do not.
func runPMIxd(ctx context.Context, args []string) error {
	if code := pmix.Main(ctx, args, os.Stdout, os.Stderr); code != 0 {
		return exitError{code}
	}
	return nil
}
