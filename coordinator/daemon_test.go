package coordinator

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

// A shim that comes back on the same address and registers again is
// reachable at once, however long the connection's reconnect back-off grew
// while the shim was down; a shim the coordinator cannot connect to is not
// registered, and the error says what to check.
func TestShimRegisteringAgainIsReachableAtOnce(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	gs := grpc.NewServer()
	apiv1.RegisterShimServer(gs, apiv1.UnimplementedShimServer{})
	go gs.Serve(lis)

	// Every failed attempt to connect puts the connection into a 10-minute
	// back-off.
	conns := &shimConns{opts: []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Minute, Multiplier: 1, MaxDelay: 10 * time.Minute},
			MinConnectTimeout: time.Second,
		}),
	}}
	defer conns.close()
	cl, err := conns.dial(context.Background(), addr)
	if err != nil {
		t.Fatalf("register a listening shim: %v", err)
	}
	call := func() codes.Code {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cl.Status(ctx, &apiv1.NodeRef{Job: "j", Node: "n0"})
		return status.Code(err) // Unimplemented comes from the server: the call got through
	}
	if c := call(); c != codes.Unimplemented {
		t.Fatalf("call to a registered shim: %v, want the server's Unimplemented", c)
	}

	// The shim dies; the coordinator's calls fail and the connection backs off.
	gs.Stop()
	if c := call(); c != codes.Unavailable {
		t.Fatalf("call to a shim that is down: %v, want Unavailable", c)
	}
	conn, _ := conns.conn(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for conn.GetState() == connectivity.Ready {
		if !conn.WaitForStateChange(ctx, connectivity.Ready) {
			t.Fatal("the connection to a stopped shim stays ready")
		}
	}
	start := time.Now()
	if _, err := conns.dial(context.Background(), addr); err == nil ||
		!strings.Contains(err.Error(), "no connection within") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("register a shim nobody listens for: %v", err)
	} else {
		t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}

	// The shim comes back on the same address; the back-off still runs.
	lis, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	gs = grpc.NewServer()
	apiv1.RegisterShimServer(gs, apiv1.UnimplementedShimServer{})
	go gs.Serve(lis)
	defer gs.Stop()
	if c := call(); c != codes.Unavailable {
		t.Fatalf("before the shim registered again: %v, want Unavailable (the back-off still runs)", c)
	}

	// It registers again: the next call goes through.
	if cl, err = conns.dial(context.Background(), addr); err != nil {
		t.Fatalf("register the shim that came back: %v", err)
	}
	if c := call(); c != codes.Unimplemented {
		t.Fatalf("after the shim registered again: %v, want the server's Unimplemented", c)
	}
}

// TestOneCoordinatorPerStateDir: a second coordinator on the same state
// directory is refused while the first runs (both would write the
// registry), and starts once the first has stopped.
func TestOneCoordinatorPerStateDir(t *testing.T) {
	dir := t.TempDir()
	cfg := DaemonConfig{StateDir: filepath.Join(dir, "state"), CheckpointDir: filepath.Join(dir, "ckpt")}
	d1, err := StartDaemon(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d2, err := StartDaemon(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "another coordinator uses state directory") {
		if d2 != nil {
			d2.Close()
		}
		t.Fatalf("second coordinator on the same state directory: %v, want refused", err)
	}
	d1.Close()
	d3, err := StartDaemon(context.Background(), cfg)
	if err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	d3.Close()
	if _, err := os.Stat(filepath.Join(cfg.StateDir, DaemonMarker)); !os.IsNotExist(err) {
		t.Errorf("a coordinator that listens for no shim marked its state directory a daemon's: %v", err)
	}
}

// TestSocketOfAnotherCoordinatorKept: a coordinator that cannot listen on
// its socket (another serves it) fails to start without touching the
// registry, and leaves the socket to the one that serves it.
func TestSocketOfAnotherCoordinatorKept(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "coordinator.sock")
	d1, err := StartDaemon(context.Background(), DaemonConfig{StateDir: filepath.Join(dir, "s1"), CheckpointDir: filepath.Join(dir, "c1"), Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	if d2, err := StartDaemon(context.Background(), DaemonConfig{StateDir: filepath.Join(dir, "s2"), CheckpointDir: filepath.Join(dir, "c2"), Socket: sock}); err == nil {
		d2.Close()
		t.Fatal("a second coordinator started on a socket the first serves")
	} else if !strings.Contains(err.Error(), "a coordinator already listens on") {
		t.Fatalf("second coordinator: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "s2", "jobs.json")); !os.IsNotExist(err) {
		t.Errorf("the coordinator that could not serve wrote a registry: %v", err)
	}
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		t.Fatalf("the first coordinator's socket is gone: %v", err)
	}
	conn.Close()
}
