package client

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestSocketPath(t *testing.T) {
	t.Setenv("TORPOR_SOCKET", "")
	if got := SocketPath(""); got != DefaultSocket {
		t.Errorf("SocketPath(\"\") = %q, want %q", got, DefaultSocket)
	}
	t.Setenv("TORPOR_SOCKET", "/env.sock")
	if got := SocketPath(""); got != "/env.sock" {
		t.Errorf("SocketPath(\"\") with $TORPOR_SOCKET = %q", got)
	}
	if got := SocketPath("/flag.sock"); got != "/flag.sock" {
		t.Errorf("SocketPath(/flag.sock) = %q: the flag must win over $TORPOR_SOCKET", got)
	}
}

func TestRPCErr(t *testing.T) {
	if RPCErr(nil) != nil {
		t.Error("RPCErr(nil) != nil")
	}
	err := status.Error(codes.NotFound, "no job j1")
	if got := RPCErr(err); got == nil || got.Error() != "no job j1" {
		t.Errorf("RPCErr(%v) = %v, want the bare message", err, got)
	}
	plain := errors.New("plain")
	if got := RPCErr(plain); got != plain {
		t.Errorf("RPCErr(plain) = %v, want it unchanged", got)
	}
}

func TestListens(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	if Listens(sock) {
		t.Fatal("Listens on a missing socket")
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if !Listens(sock) {
		t.Error("!Listens on a listening socket")
	}
	// A socket file left behind by a dead coordinator does not count.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket file gone: %v", err)
	}
	if Listens(sock) {
		t.Error("Listens on a stale socket file")
	}
}

func TestDialNoSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, _, err := Dial(sock)
	if err == nil || !strings.Contains(err.Error(), "no coordinator at "+sock) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dial(missing) = %v", err)
	}
}
