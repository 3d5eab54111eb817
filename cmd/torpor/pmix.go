//go:build cgo

package main

import (
	"context"
	"fmt"
	"os"

	"github.com/torpor-hpc/torpor/pmix"
	"github.com/torpor-hpc/torpor/pmix/libpmix"
)

// pmixVersion reports the libpmix version this binary is linked with.
var pmixVersion = func() (string, error) { return libpmix.Version(), nil }

// runPMIxd is PID 1's child in an MPI job-node sandbox: the ranks' PMIx
// (or PMI-1) server. The shim starts it; users do not.
//
// `torpor pmixd --pmix-version` prints the version of the libpmix it loaded
// and exits: torpor doctor runs it under Open MPI 5's loader and libraries.
func runPMIxd(ctx context.Context, args []string) error {
	if len(args) == 1 && args[0] == "--pmix-version" {
		v, err := pmixVersion()
		if err != nil {
			return err
		}
		fmt.Println(v)
		return nil
	}
	if code := pmix.Main(ctx, args, os.Stdout, os.Stderr); code != 0 {
		return exitError{code}
	}
	return nil
}
