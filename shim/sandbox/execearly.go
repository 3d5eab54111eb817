//go:build cgo

package sandbox

// initearly.c holds the sandbox's init (initArg0) and execearly.c the
// command's process (execArg0): constructors that run before the Go
// runtime, in every binary that links this package, and never return.

// #cgo CFLAGS: -Wall -Werror
import "C"
