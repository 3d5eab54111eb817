//go:build cgo

package sandbox

// execearly.c holds the command's process (execArg0): a constructor that
// runs before the Go runtime, in every binary that links this package.

// #cgo CFLAGS: -Wall -Werror
import "C"
