//go:build !cgo

package main

import (
	"context"
	"errors"
)

// pmixVersion is nil without cgo: torpor doctor then says how to rebuild.
var pmixVersion func() (string, error)

func runPMIxd(context.Context, []string) error {
	return errors.New("this torpor binary was built without cgo and cannot run pmixd: rebuild with CGO_ENABLED=1 and libpmix-dev")
}
