package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/client"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/internal/pki"
)

// echoCoordinator answers what a relayed call carried: Jobs names the
// caller's relayed uid, host and Slurm job; Events streams three events,
// then fails.
type echoCoordinator struct {
	apiv1.UnimplementedCoordinatorServer
}

func (echoCoordinator) seen(ctx context.Context) (string, error) {
	p, _ := peer.FromContext(ctx)
	if _, ok := p.AuthInfo.(credentials.TLSInfo); !ok {
		return "", status.Error(codes.PermissionDenied, "not over TLS")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	get := func(k string) string {
		v := md.Get(k)
		if len(v) != 1 {
			return "<" + strconv.Itoa(len(v)) + " values>"
		}
		return v[0]
	}
	return get(coordinator.RelayUIDKey) + " " + get(coordinator.RelayHostKey) + " " + get(coordinator.SlurmJobKey), nil
}

func (e echoCoordinator) Jobs(ctx context.Context, _ *apiv1.Empty) (*apiv1.JobList, error) {
	s, err := e.seen(ctx)
	if err != nil {
		return nil, err
	}
	return &apiv1.JobList{Jobs: []*apiv1.Job{{Spec: &apiv1.JobSpec{Id: s}}}}, nil
}

func (e echoCoordinator) Events(_ *apiv1.EventsRequest, stream apiv1.Coordinator_EventsServer) error {
	for i := 1; i <= 3; i++ {
		if err := stream.Send(&apiv1.Event{Seq: uint64(i)}); err != nil {
			return err
		}
	}
	return status.Error(codes.Unavailable, "the coordinator is stopping; follow again")
}

func (echoCoordinator) Register(context.Context, *apiv1.RegisterRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, nil
}

// TestRelayUsers: a call on the user socket reaches the coordinator over
// mutual TLS with the caller's uid from SO_PEERCRED (a uid the client sends
// itself is dropped), the Slurm job passes, streams and errors pass
// unchanged, and shims' own methods are refused.
func TestRelayUsers(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"coordinator", "shim"} {
		if err := ca.Issue(dir, n, pki.RoleBoth, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	stls, _, err := pki.Configs(dir, "coordinator", "")
	if err != nil {
		t.Fatal(err)
	}
	_, ctls, err := pki.Configs(dir, "shim", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(stls)))
	apiv1.RegisterCoordinatorServer(gs, echoCoordinator{})
	go func() { _ = gs.Serve(tlis) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(tlis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(ctls)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	sock := filepath.Join(dir, "run", "user.sock")
	ulis, err := listenUsers(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { serveUsers(ctx, ulis, conn, "h7", slog.New(slog.DiscardHandler)); close(done) }()
	stopRelay := sync.OnceFunc(func() { cancel(); <-done })
	defer stopRelay()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("user socket: %v %v", fi, err)
	}

	t.Setenv("SLURM_JOB_ID", "4242")
	cl, closeCl, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer closeCl()
	// A uid of the client's own making is not relayed.
	forged := metadata.AppendToOutgoingContext(context.Background(), coordinator.RelayUIDKey, "12345", coordinator.RelayHostKey, "elsewhere")
	jl, err := cl.Jobs(forged, &apiv1.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	want := strconv.Itoa(os.Getuid()) + " h7 4242"
	if got := jl.Jobs[0].Spec.Id; got != want {
		t.Fatalf("coordinator saw %q, want %q", got, want)
	}

	st, err := cl.Events(context.Background(), &apiv1.EventsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for {
		e, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) != codes.Unavailable {
				t.Fatalf("stream ended with %v, want the coordinator's Unavailable", err)
			}
			break
		}
		seqs = append(seqs, e.Seq)
	}
	if len(seqs) != 3 || seqs[2] != 3 {
		t.Fatalf("events %v, want 1 2 3", seqs)
	}

	if _, err := cl.Register(context.Background(), &apiv1.RegisterRequest{Host: "h7", Address: "x"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Register through the user socket: %v, want PermissionDenied", err)
	}
	stopRelay()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("user socket left after the relay stopped: %v", err)
	}
}

func TestListenUsersRefusesFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "user.sock")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUsers(p); err == nil {
		t.Fatal("a regular file at the socket's path was replaced")
	}
	if b, _ := os.ReadFile(p); string(b) != "x" {
		t.Fatal("the file was changed")
	}
	if _, err := listenUsers("rel.sock"); err == nil {
		t.Fatal("relative path accepted")
	}
}
