//go:build !cgo

package main

// pmixVersion is nil without cgo: torpor doctor then says how to rebuild.
var pmixVersion func() (string, error)
