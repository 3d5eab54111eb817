package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

const helperEnv = "TORPOR_COORDINATOR_TEST_HELPER"

// TestMain lets the test binary act as a CLI client under another uid.
func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		os.Exit(helperCheckpoint(sock))
	}
	os.Exit(m.Run())
}

func helperCheckpoint(sock string) int {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(PeerCredentials{}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The job's output is the job's too: refused alike, or allowed alike.
	_, oerr := apiv1.NewCoordinatorClient(conn).Output(ctx, &apiv1.OutputRequest{Job: "job1", Offsets: map[string]int64{"n0": 0}})
	_, err = apiv1.NewCoordinatorClient(conn).Checkpoint(ctx, &apiv1.CheckpointRequest{Job: "job1"})
	if (oerr == nil) != (err == nil) || oerr != nil && !errors.Is(agentapi.FromRPC(oerr), agentapi.ErrPermission) {
		fmt.Println("output and checkpoint answered differently:", oerr, err)
		return 5
	}
	if err != nil {
		fmt.Println(err)
		if errors.Is(agentapi.FromRPC(err), agentapi.ErrPermission) {
			return 1
		}
		return 4
	}
	return 0
}

// serveShims puts each fake agent behind a real gRPC Shim server on loopback
// and returns a coordinator fixture that reaches them through agentapi.Client.
func serveShims(t *testing.T, f *fixture) {
	t.Helper()
	for h, fa := range f.agents {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		apiv1.RegisterShimServer(srv, agentapi.Server{Agent: fa})
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		f.c.AddAgent(h, agentapi.Client{Shim: apiv1.NewShimClient(conn)})
	}
}

func TestProtocolOverGRPC(t *testing.T) {
	for _, mode := range []string{"ok", "error", "timeout"} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t, "h0", "h1", "h2", "h3")
			serveShims(t, f)
			switch mode {
			case "error":
				f.agents["h2"].fail[PhaseDump] = errors.New("criu: Error (criu/sk-inet.c:1): boom")
			case "timeout":
				f.hang("h2", PhaseDrain)
			}
			_, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
			switch mode {
			case "ok":
				if err != nil {
					t.Fatal(err)
				}
				if err := f.c.Migrate(context.Background(), "job1", "n0", "h3"); err != nil {
					t.Fatal(err)
				}
			case "error":
				if err == nil || !strings.Contains(err.Error(), "sk-inet.c") {
					t.Fatalf("err = %v, want the shim's CRIU error", err)
				}
			case "timeout":
				if !isTimeout(err) {
					t.Fatalf("err = %v, want a deadline", err)
				}
				f.heal("h2", PhaseDrain)
			}
			f.assertRunning(t)
			f.assertNoPartial(t)
		})
	}
}

// A non-root user's CLI call on a root-owned job is refused (a checkpoint,
// and reading its output); root's is not.
func TestPeerCredAuthorization(t *testing.T) {
	testutil.RequireRoot(t, "runs a client under another uid")
	f := newFixture(t, "h0", "h1", "h2")
	f.c.mu.Lock()
	f.c.jobs["job1"].Spec.Owner = 0
	f.c.mu.Unlock()
	// t.TempDir's parent is private to root; the other user must reach the socket.
	dir, err := os.MkdirTemp("", "torpor-peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "coordinator.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(PeerCredentials{}))
	apiv1.RegisterCoordinatorServer(srv, &Server{C: f.c})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	// The go test build directory is private to root: run a world-readable copy.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(uid uint32) (int, string) {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatalf("run helper: %v", err)
		}
		return 0, string(out)
	}
	if code, out := run(65534); code != 1 || !strings.Contains(out, "belongs to uid 0") {
		t.Fatalf("uid 65534: exit %d, %q; want a permission error", code, out)
	}
	if code, out := run(0); code != 0 {
		t.Fatalf("root: exit %d, %q", code, out)
	}
	if j, _ := f.c.Job("job1"); j.LastCheckpoint == "" {
		t.Fatal("root's checkpoint did not happen")
	}
}
