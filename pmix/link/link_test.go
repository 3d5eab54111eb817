package link

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/pmix/hostmsg"
)

// fakeHandler stands in for the pmix.Daemon.
type fakeHandler struct {
	mu         sync.Mutex
	prepared   []string
	restored   chan string
	terminated chan error
	prepareErr error
	prepareDur time.Duration
}

func newFakeHandler() *fakeHandler {
	return &fakeHandler{restored: make(chan string, 4), terminated: make(chan error, 4)}
}

func (h *fakeHandler) Prepare(ctx context.Context, id string, timeout time.Duration) (hostmsg.PrepareResult, error) {
	h.mu.Lock()
	h.prepared = append(h.prepared, fmt.Sprintf("%s/%v", id, timeout))
	err, dur := h.prepareErr, h.prepareDur
	h.mu.Unlock()
	time.Sleep(dur)
	if err != nil {
		return hostmsg.PrepareResult{Checkpoint: id}, err
	}
	return hostmsg.PrepareResult{Checkpoint: id, Registered: 2, Completed: 1, Laggards: []int{3}}, nil
}

func (h *fakeHandler) Restored(_ context.Context, id string) error { h.restored <- id; return nil }

func (h *fakeHandler) ServeDirectModex(_ context.Context, rank int) ([]byte, error) {
	if rank < 0 {
		return nil, errors.New("no such rank")
	}
	return []byte(fmt.Sprintf("blob-%d", rank)), nil
}

func (h *fakeHandler) Terminate(cause error) { h.terminated <- cause }

// fakeForwarder answers fences with the node's own data; block makes fences
// wait until their context ends (a coordinator that never answers).
type fakeForwarder struct {
	mu     sync.Mutex
	fences []string
	failed []hostmsg.Failure
	block  bool
}

func (f *fakeForwarder) Fence(ctx context.Context, req hostmsg.FenceRequest) ([]byte, error) {
	f.mu.Lock()
	f.fences = append(f.fences, fmt.Sprintf("%s#%d@%d", req.Signature, req.Seq, req.Node))
	block := f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return append([]byte("all:"), req.Data...), nil
}

func (f *fakeForwarder) DirectModex(_ context.Context, req hostmsg.ModexRequest) ([]byte, error) {
	return []byte(fmt.Sprintf("modex-%d-from-%d", req.Rank, req.Node)), nil
}

func (f *fakeForwarder) Failed(_ context.Context, fl hostmsg.Failure) error {
	f.mu.Lock()
	f.failed = append(f.failed, fl)
	f.mu.Unlock()
	return nil
}

func (f *fakeForwarder) fenceLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.fences...)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testutil.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func socketPath(t *testing.T) string {
	// Unix socket paths are limited to 108 bytes: t.TempDir() may be long.
	dir, err := os.MkdirTemp("", "torpor-link-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "node0", "link.sock")
}

func startServer(t *testing.T, path string, fw Forwarder) *Server {
	t.Helper()
	s := NewServer(fw, testLogger(t).With("side", "shim"))
	if err := s.Listen(path); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func startClient(t *testing.T, path string, h Handler) *Client {
	t.Helper()
	c := NewClient(Config{Path: path, Job: "jobA", Node: 0, Logger: testLogger(t).With("side", "pmixd")})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx, h) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// startPair starts a shim's server with fw and a pmixd's client with h on a
// new socket, at path.
func startPair(t *testing.T, fw Forwarder, h Handler) (path string, srv *Server, cl *Client) {
	t.Helper()
	path = socketPath(t)
	srv = startServer(t, path, fw)
	cl = startClient(t, path, h)
	return path, srv, cl
}

// noRestore fails the test if h was told of a restore; when says in what case.
func (h *fakeHandler) noRestore(t *testing.T, when string) {
	t.Helper()
	select {
	case id := <-h.restored:
		t.Errorf("restored event %q %s", id, when)
	default:
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func fence(seq uint64, data string) hostmsg.FenceRequest {
	return hostmsg.FenceRequest{Job: "jobA", Node: 0, Nodes: []int{0}, Signature: "jobA:*", Seq: seq, Collect: true, Data: []byte(data)}
}

func TestCallsAndRequests(t *testing.T) {
	fw := &fakeForwarder{}
	h := newFakeHandler()
	_, srv, cl := startPair(t, fw, h)
	ctx := ctxT(t, 10*time.Second)

	hello, err := srv.Connected(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hello.Job != "jobA" || hello.Node != 0 || hello.Generation != 0 || hello.PID != os.Getpid() {
		t.Errorf("hello = %+v", hello)
	}
	out, err := cl.Fence(ctx, fence(0, "x"))
	if err != nil || string(out) != "all:x" {
		t.Errorf("Fence = %q, %v; want all:x", out, err)
	}
	out, err = cl.DirectModex(ctx, hostmsg.ModexRequest{Job: "jobA", Rank: 5, Node: 2, From: 0})
	if err != nil || string(out) != "modex-5-from-2" {
		t.Errorf("DirectModex = %q, %v", out, err)
	}
	if err := cl.Failed(ctx, hostmsg.Failure{Job: "jobA", Node: 0, Rank: 1, Code: 7, Err: errors.New("rank 1 aborted")}); err != nil {
		t.Errorf("Failed: %v", err)
	}
	if len(fw.failed) != 1 || fw.failed[0].Code != 7 || fw.failed[0].Err == nil || fw.failed[0].Err.Error() != "rank 1 aborted" {
		t.Errorf("forwarded failures %+v", fw.failed)
	}
	blob, err := srv.ServeDirectModex(ctx, 4)
	if err != nil || string(blob) != "blob-4" {
		t.Errorf("ServeDirectModex = %q, %v", blob, err)
	}
	if _, err := srv.ServeDirectModex(ctx, -1); err == nil || !errors.Is(err, ErrRemote) {
		t.Errorf("ServeDirectModex(-1) = %v, want a remote error", err)
	}
	if err := srv.Terminate(ctx, "node 1 failed"); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-h.terminated:
		if !strings.Contains(cause.Error(), "node 1 failed") {
			t.Errorf("terminate cause %v", cause)
		}
	case <-ctx.Done():
		t.Fatal("pmixd was not told to terminate")
	}
}

// The restore path: prepare parks the link, the shim is replaced by a new one
// at the same path, pmixd re-dials with generation+1, learns it was restored,
// and a fence made while the link was down completes through the new shim.
func TestPrepareParksAndNewShimTakesOver(t *testing.T) {
	fw1 := &fakeForwarder{}
	h := newFakeHandler()
	path, srv1, cl := startPair(t, fw1, h)
	ctx := ctxT(t, 15*time.Second)
	if _, err := srv1.Connected(ctx); err != nil {
		t.Fatal(err)
	}

	res, err := srv1.Prepare(ctx, "jobA/000001", 1500*time.Millisecond)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if res.Checkpoint != "jobA/000001" || res.Registered != 2 || res.Completed != 1 || len(res.Laggards) != 1 || res.Laggards[0] != 3 {
		t.Errorf("result %+v", res)
	}
	if got := h.prepared; len(got) != 1 || got[0] != "jobA/000001/1.5s" {
		t.Errorf("handler saw prepares %v", got)
	}
	if cl.Connected() {
		t.Errorf("pmixd still connected after prepare")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still at %s after prepare (err %v): pmixd could re-dial into the dump", path, err)
	}
	// pmixd keeps dialling and stays down: nobody listens.
	time.Sleep(300 * time.Millisecond)
	if cl.Connected() || cl.Generation() != 1 {
		t.Fatalf("after prepare: connected=%v generation=%d, want down at 1", cl.Connected(), cl.Generation())
	}

	// A fence made while the link is down waits for the next shim.
	type result struct {
		out []byte
		err error
	}
	fenced := make(chan result, 1)
	go func() {
		out, err := cl.Fence(ctx, fence(3, "late"))
		fenced <- result{out, err}
	}()

	// "Restore on another host": the old shim is gone, a new one listens.
	srv1.Close()
	fw2 := &fakeForwarder{}
	srv2 := NewServer(fw2, testLogger(t).With("side", "shim2"))
	srv2.SetRestoredFrom("jobA/000001")
	if err := srv2.Listen(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv2.Close() })
	hello, err := srv2.Connected(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hello.Generation != 1 {
		t.Errorf("hello generation %d after re-dial, want 1", hello.Generation)
	}
	select {
	case id := <-h.restored:
		if id != "jobA/000001" {
			t.Errorf("restored from %q", id)
		}
	case <-ctx.Done():
		t.Fatal("pmixd was not told about the restore")
	}
	select {
	case r := <-fenced:
		if r.err != nil || string(r.out) != "all:late" {
			t.Errorf("fence across the reconnect = %q, %v", r.out, r.err)
		}
	case <-ctx.Done():
		t.Fatal("fence made while the link was down never completed")
	}
	if got := fw2.fenceLog(); len(got) != 1 || got[0] != "jobA:*#3@0" {
		t.Errorf("new shim saw fences %v", got)
	}
	// restored_from is consumed by one welcome.
	srv2.mu.Lock()
	left := srv2.restoredFrom
	srv2.mu.Unlock()
	if left != "" {
		t.Errorf("restoredFrom %q still set after the welcome", left)
	}
}

// A fence in flight when the connection drops is sent again, unchanged, on
// the next connection.
func TestInFlightCallResent(t *testing.T) {
	fw1 := &fakeForwarder{block: true}
	h := newFakeHandler()
	path, srv1, cl := startPair(t, fw1, h)
	ctx := ctxT(t, 15*time.Second)
	if _, err := srv1.Connected(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		out, err := cl.Fence(ctx, fence(0, "d"))
		if err == nil && string(out) != "all:d" {
			err = fmt.Errorf("got %q", out)
		}
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(fw1.fenceLog()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("fence never reached the first shim")
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv1.Close() // the shim dies with the fence in flight
	fw2 := &fakeForwarder{}
	srv2 := startServer(t, path, fw2)
	hello, err := srv2.Connected(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hello.Generation != 1 {
		t.Errorf("generation %d, want 1", hello.Generation)
	}
	if err := <-done; err != nil {
		t.Fatalf("fence across a shim restart: %v", err)
	}
	if a, b := fw1.fenceLog(), fw2.fenceLog(); len(a) != 1 || len(b) != 1 || a[0] != b[0] {
		t.Errorf("first shim saw %v, second %v: want the same contribution once each", a, b)
	}
	h.noRestore(t, "without a restore")
}

// A prepare that fails is an error, and the shim listens again at once.
func TestPrepareErrorListensAgain(t *testing.T) {
	h := newFakeHandler()
	h.prepareErr = errors.New("pmix server gone")
	_, srv, cl := startPair(t, &fakeForwarder{}, h)
	ctx := ctxT(t, 10*time.Second)
	if _, err := srv.Connected(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := srv.Prepare(ctx, "jobA/000002", time.Second)
	if err == nil || !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), "pmix server gone") {
		t.Fatalf("Prepare = %v, want the handler's error", err)
	}
	hello, err := srv.Connected(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hello.Generation != 1 {
		t.Errorf("generation %d after a failed prepare, want 1 (re-dialled)", hello.Generation)
	}
	if out, err := cl.Fence(ctx, fence(1, "z")); err != nil || string(out) != "all:z" {
		t.Errorf("fence after the failed prepare = %q, %v", out, err)
	}
}

// Resume after a leave-running checkpoint: pmixd comes back, not restored.
func TestResumeAfterPrepare(t *testing.T) {
	h := newFakeHandler()
	_, srv, cl := startPair(t, &fakeForwarder{}, h)
	ctx := ctxT(t, 10*time.Second)
	for gen := uint64(0); gen < 3; gen++ {
		hello, err := srv.Connected(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if hello.Generation != gen {
			t.Errorf("round %d: generation %d", gen, hello.Generation)
		}
		if _, err := srv.Prepare(ctx, fmt.Sprintf("jobA/%06d", gen+1), 0); err != nil {
			t.Fatalf("round %d: Prepare: %v", gen, err)
		}
		if cl.Connected() {
			t.Errorf("round %d: connected after prepare", gen)
		}
		if err := srv.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Fence(ctx, fence(9, "r")); err != nil {
		t.Errorf("fence after three checkpoints: %v", err)
	}
	if got := h.prepared; len(got) != 3 || got[0] != "jobA/000001/0s" {
		t.Errorf("prepares %v", got)
	}
	h.noRestore(t, "on resume")
}

func TestPrepareWaitsForConnection(t *testing.T) {
	path := socketPath(t)
	srv := startServer(t, path, &fakeForwarder{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := srv.Prepare(ctx, "jobA/1", time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Prepare with nobody connected = %v, want deadline exceeded", err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("socket gone after a prepare that never started: %v", err)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := socketPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // a dead shim's socket file stays behind
	startServer(t, path, &fakeForwarder{})
	other := filepath.Join(filepath.Dir(path), "plain")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := NewServer(&fakeForwarder{}, nil).Listen(other); err == nil {
		t.Errorf("Listen over a regular file succeeded")
	}
	long := "/run/torpor/sandboxes/" + strings.Repeat("j", 80) + "/0/link.sock"
	if err := NewServer(&fakeForwarder{}, nil).Listen(long); !errors.Is(err, ErrPathTooLong) {
		t.Errorf("Listen on a %d-byte path = %v, want ErrPathTooLong", len(long), err)
	}
}

func TestFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    message
	}{
		{"hello", message{Type: typeHello, Hello: &Hello{Job: "j", Node: 3, PID: 1, Generation: 7}}},
		{"fence", message{Type: typeFence, ID: 9, Fence: &hostmsg.FenceRequest{Job: "j", Nodes: []int{0, 1}, Signature: "j:*", Seq: 4, Data: []byte{0, 1, 2, 255}}}},
		{"result", message{Type: typePrepared, ID: 2, Result: &hostmsg.PrepareResult{Checkpoint: "j/1", Registered: 3, Completed: 2, Laggards: []int{1}, Elapsed: time.Second}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeFrame(&b, tc.m); err != nil {
				t.Fatal(err)
			}
			got, err := readFrame(&b)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprintf("%+v", deref(got)) != fmt.Sprintf("%+v", deref(tc.m)) {
				t.Errorf("round trip\n got %+v\nwant %+v", deref(got), deref(tc.m))
			}
		})
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrame+1)
	if _, err := readFrame(bytes.NewReader(hdr[:])); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
	binary.BigEndian.PutUint32(hdr[:], 3)
	if _, err := readFrame(bytes.NewReader(append(hdr[:], "{x}"...))); err == nil {
		t.Errorf("garbage frame decoded")
	}
}

// deref renders a message's payload pointers as values for comparison.
func deref(m message) []any {
	out := []any{m.Type, m.ID}
	if m.Hello != nil {
		out = append(out, *m.Hello)
	}
	if m.Fence != nil {
		out = append(out, *m.Fence)
	}
	if m.Result != nil {
		out = append(out, *m.Result)
	}
	return out
}
