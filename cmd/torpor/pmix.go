//go:build cgo

package main

import "github.com/torpor-hpc/torpor/pmix/libpmix"

// pmixVersion reports the libpmix version this binary is linked with.
var pmixVersion = func() (string, error) { return libpmix.Version(), nil }
