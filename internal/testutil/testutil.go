// Package testutil holds what the tests of several packages share. Only
// tests import it.
package testutil

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
)

// RequireRoot stops a test that needs root (namespaces, cgroups, eBPF,
// CRIU, mknod, other uids) when it does not run as root. why says what the
// test does with root, for the message.
//
// Outside CI a non-root run skips the test: a developer's `go test` of a
// package as a user still runs its other tests. In CI (the CI environment
// variable set, as every CI system does) it fails instead: CI runs as root
// (.ci/run: make test), so a test that would skip there has lost the
// coverage it exists for, and this project counts a test that skips in CI
// as a defect. That is the strictest of the rules the packages had (they
// all skipped) that still lets an unprivileged developer run unit tests.
func RequireRoot(tb testing.TB, why string) {
	tb.Helper()
	requireRoot(tb, why, os.Geteuid(), os.Getenv("CI") != "")
}

func requireRoot(tb testing.TB, why string, euid int, ci bool) {
	tb.Helper()
	switch {
	case euid == 0:
	case ci:
		tb.Fatalf("needs root (%s), and CI is set: CI must run the tests as root", why)
	default:
		tb.Skipf("needs root: %s", why)
	}
}

// LogWriter is an io.Writer that logs each write as one line of tb's log
// (a trailing newline dropped), for slog handlers in tests: the output
// shows with the test that wrote it.
func LogWriter(tb testing.TB) io.Writer { return logWriter{tb} }

type logWriter struct{ tb testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Serve accepts connections on ln until the test ends, when it closes ln, and
// hands each to handle in a goroutine of its own.
func Serve(tb testing.TB, ln net.Listener, handle func(net.Conn)) {
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}
