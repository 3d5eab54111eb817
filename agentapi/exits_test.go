package agentapi

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

// chanExits tells of the exits sent on it once it listens.
type chanExits chan NodeRef

func (c chanExits) WatchExits(ctx context.Context, live func(), exited func(NodeRef)) error {
	live()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-c:
			exited(r)
		}
	}
}

// shimClient serves srv on loopback and returns a client of it.
func shimClient(t *testing.T, srv Server) Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	apiv1.RegisterShimServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return Client{Shim: apiv1.NewShimClient(conn)}
}

// TestExitsOverGRPC: a shim's exits reach the client in order after it
// listens, the watch ends with the call, and a shim that does not tell of
// exits fails the watch at once.
func TestExitsOverGRPC(t *testing.T) {
	exits := make(chanExits, 2)
	cl := shimClient(t, Server{Exiting: exits})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wctx, stop := context.WithCancel(ctx)
	got := make(chan NodeRef)
	done := make(chan error, 1)
	go func() {
		done <- cl.WatchExits(wctx, func() {
			exits <- NodeRef{Job: "j", Node: "n0"}
			exits <- NodeRef{Job: "j", Node: "n1"}
		}, func(r NodeRef) { got <- r })
	}()
	for _, want := range []string{"n0", "n1"} {
		select {
		case r := <-got:
			if r.Job != "j" || r.Node != want {
				t.Fatalf("told of %s/%s, want j/%s", r.Job, r.Node, want)
			}
		case err := <-done:
			t.Fatalf("watch ended before j/%s: %v", want, err)
		case <-ctx.Done():
			t.Fatalf("never told of j/%s", want)
		}
	}
	stop()
	if err := <-done; err == nil {
		t.Fatal("a watch whose call ended returned no error")
	}

	old := shimClient(t, Server{})
	err := old.WatchExits(ctx, func() { t.Error("a shim that does not tell of exits listens") }, func(NodeRef) {})
	if err == nil || !strings.Contains(err.Error(), "does not tell of exits") {
		t.Fatalf("watch of a shim without exits: %v, want its refusal", err)
	}
}
