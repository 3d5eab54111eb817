package agentapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/internal/pki"
)

// wireImages serves what a test sets: chunks, then sum or err. With wait
// it first blocks until the request's context ends, and reports that on
// gone.
type wireImages struct {
	chunks []ImageChunk
	sum    string
	err    error
	wait   bool
	gone   chan error
	asked  chan *apiv1.ImagesRequest
}

func (w *wireImages) SendImages(ctx context.Context, ref NodeRef, ckpt string, send func(ImageChunk) error) (string, error) {
	w.asked <- &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Job: ref.Job, Node: ref.Node}, Checkpoint: ckpt}
	if w.wait {
		<-ctx.Done()
		w.gone <- ctx.Err()
		return "", ctx.Err()
	}
	for _, c := range w.chunks {
		if err := send(c); err != nil {
			return "", err
		}
	}
	return w.sum, w.err
}

func (w *wireImages) SendStored(ctx context.Context, handle, node string, send func(ImageChunk) error) (string, error) {
	w.asked <- &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Node: node}, Checkpoint: handle, Stored: true}
	return w.sum, nil
}

// wireTLS returns a shim's server and client configuration signed by one
// CA, and a client configuration of another CA's shim certificate.
func wireTLS(t *testing.T) (server, client, stranger *tls.Config) {
	t.Helper()
	c := wireCerts(t, t.TempDir())
	return c.server, c.shim, wireCerts(t, filepath.Join(t.TempDir(), "other")).shim
}

// wireConfigs are a CA's certificates as the shim's port meets them.
type wireConfigs struct {
	server      *tls.Config // the shim's server
	shim        *tls.Config // another shim, as a client
	coordinator *tls.Config // the coordinator, as a client
	intruder    *tls.Config // a certificate of the CA under any other name
}

func wireCerts(t *testing.T, dir string) wireConfigs {
	t.Helper()
	ca, err := pki.EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	client := func(name string) (*tls.Config, *tls.Config) {
		if err := ca.Issue(dir, name, pki.RoleBoth, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		s, c, err := pki.Configs(dir, name, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		return s, c
	}
	var w wireConfigs
	w.server, w.shim = client(pki.ShimName)
	_, w.coordinator = client(pki.CoordinatorName)
	_, w.intruder = client("intruder")
	return w
}

func serveWire(t *testing.T, stls *tls.Config, srv Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewShimServer(stls, srv)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// TestImageProtocol: chunks arrive in order and whole, with the digest; an
// error crosses as itself; gRPC works on the same port; a peer the CA did
// not sign gets nothing; a client that goes away ends the server's send.
func TestImageProtocol(t *testing.T) {
	w := wireCerts(t, t.TempDir())
	stls, ctls, coordinatorTLS := w.server, w.shim, w.coordinator
	stranger := wireCerts(t, filepath.Join(t.TempDir(), "other")).shim
	big := bytes.Repeat([]byte("0123456789abcdef"), maxChunkData/16)
	is := &wireImages{
		chunks: []ImageChunk{{Name: "pages-1.img", Data: big}, {Name: "pages-1.img", Offset: int64(len(big)), Data: []byte("tail")},
			{Name: "empty.img"}, {Name: "sub/core-1.img", Data: []byte("core")}},
		sum: "feed", asked: make(chan *apiv1.ImagesRequest, 10), gone: make(chan error, 1),
	}
	addr := serveWire(t, stls, Server{ImageServer: is})
	ctx := context.Background()
	req := &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Job: "j", Node: "n0"}, Checkpoint: "j/3"}

	var got []ImageChunk
	sum, err := ReceiveImages(ctx, addr, ctls, req, func(c ImageChunk) error {
		got = append(got, ImageChunk{Name: c.Name, Offset: c.Offset, Data: bytes.Clone(c.Data)})
		return nil
	})
	if err != nil || sum != "feed" {
		t.Fatalf("ReceiveImages = %q, %v", sum, err)
	}
	if r := <-is.asked; r.Ref.Job != "j" || r.Ref.Node != "n0" || r.Checkpoint != "j/3" || r.Stored {
		t.Errorf("the server was asked for %v", r)
	}
	if len(got) != len(is.chunks) {
		t.Fatalf("%d chunks, want %d", len(got), len(is.chunks))
	}
	for i, c := range got {
		w := is.chunks[i]
		if c.Name != w.Name || c.Offset != w.Offset || !bytes.Equal(c.Data, w.Data) {
			t.Errorf("chunk %d: %s@%d (%d bytes), want %s@%d (%d bytes)", i, c.Name, c.Offset, len(c.Data), w.Name, w.Offset, len(w.Data))
		}
	}

	// Stored is passed on.
	stored := &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Node: "n1"}, Checkpoint: "j/000002", Stored: true}
	if _, err := ReceiveImages(ctx, addr, ctls, stored, func(ImageChunk) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if r := <-is.asked; !r.Stored || r.Ref.Node != "n1" || r.Checkpoint != "j/000002" {
		t.Errorf("the server was asked for %v", r)
	}

	// The server's error, as errors.Is knows it.
	is.err = fmt.Errorf("%w: no dump of j/n0", ErrNotFound)
	if _, err := ReceiveImages(ctx, addr, ctls, req, func(ImageChunk) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("the server's ErrNotFound arrived as %v", err)
	}
	<-is.asked
	is.err = nil

	// The receiver's own error stops the transfer.
	stop := errors.New("stop")
	if _, err := ReceiveImages(ctx, addr, ctls, req, func(ImageChunk) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("the receiver's error: %v", err)
	}
	<-is.asked

	// gRPC on the same port: the Shim service answers the coordinator (no
	// Holder here).
	tc := coordinatorTLS.Clone()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = apiv1.NewShimClient(conn).Held(ctx, &apiv1.HeldRequest{Job: "j"})
	if err = FromRPC(err); !errors.Is(err, ErrInvalid) {
		t.Errorf("Held over gRPC on the image port: %v, want the shim's ErrInvalid", err)
	}

	// A certificate from another CA: no images.
	if _, err := ReceiveImages(ctx, addr, stranger, req, func(ImageChunk) error {
		t.Error("a stranger got a chunk")
		return nil
	}); err == nil {
		t.Error("a stranger's request was answered")
	}

	// The client goes away while the server waits for the dump.
	is.wait = true
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := ReceiveImages(cctx, addr, ctls, req, func(ImageChunk) error { return nil })
		errc <- err
	}()
	<-is.asked
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled receive: %v", err)
	}
	select {
	case err := <-is.gone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the server's send ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server still sends to a client that went away")
	}
}

// TestImageProtocolRefusesBadFrames: a server that sends what the protocol
// forbids makes the receive fail, not allocate or hang.
func TestImageProtocolRefusesBadFrames(t *testing.T) {
	stls, ctls, _ := wireTLS(t)
	for _, tc := range []struct {
		frame []byte
		want  error
	}{
		{[]byte{frameData, 0, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, ErrCorrupt}, // 4 GiB of data
		{[]byte{'X'}, ErrCorrupt},                                                             // no such frame
		{[]byte{frameSum, 0, 0}, ErrCorrupt},                                                  // an empty digest
		{[]byte{frameData, 0xff, 0xff, 'a'}, ErrUnreachable},                                  // a name cut short
		{[]byte{frameData, 0, 1, 'a', 0}, ErrUnreachable},                                     // a header cut short
		{[]byte{frameData, 0, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1}, ErrUnreachable}, // data cut short
		{nil, ErrUnreachable},                                                                 // nothing at all
	} {
		addr := rawServer(t, stls, tc.frame)
		_, err := ReceiveImages(context.Background(), addr, ctls, &apiv1.ImagesRequest{}, func(ImageChunk) error { return nil })
		if !errors.Is(err, tc.want) {
			t.Errorf("frame %q: %v, want %v", tc.frame, err, tc.want)
		}
	}
}

// rawServer answers one image-protocol connection with frame and closes it.
func rawServer(t *testing.T, stls *tls.Config, frame []byte) string {
	t.Helper()
	c := stls.Clone()
	c.NextProtos = []string{ImagesALPN}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = conn.Write(frame)
	}()
	return lis.Addr().String()
}

// TestShimPortRoles: the Shim service answers only the coordinator's
// certificate, the image protocol only shims', and a certificate of the same
// CA under another name gets neither, so root on one shim host (who holds
// the shim certificate) cannot drive another host's shim.
func TestShimPortRoles(t *testing.T) {
	w := wireCerts(t, t.TempDir())
	is := &wireImages{chunks: []ImageChunk{{Name: "core-1.img", Data: []byte("core")}}, sum: "sum", asked: make(chan *apiv1.ImagesRequest, 8), gone: make(chan error, 8)}
	addr := serveWire(t, w.server, Server{ImageServer: is})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Job: "j", Node: "n0"}, Checkpoint: "j/000001"}

	held := func(c *tls.Config) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(c)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = apiv1.NewShimClient(conn).Held(ctx, &apiv1.HeldRequest{Job: "j"})
		return FromRPC(err)
	}
	if err := held(w.coordinator); !errors.Is(err, ErrInvalid) {
		t.Errorf("Held from the coordinator: %v, want the service's own ErrInvalid (no Holder)", err)
	}
	err := held(w.shim)
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), `"shim" certificate`) {
		t.Errorf("Held from a shim's certificate: %v, want ErrPermission naming it", err)
	}
	if err := held(w.intruder); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("Held from another name's certificate: %v, want a refused handshake", err)
	}
	// A stream (Exits) is the coordinator's only, as a unary call is.
	exits := func(c *tls.Config) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(c)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		st, err := apiv1.NewShimClient(conn).Exits(ctx, &apiv1.Empty{})
		if err == nil {
			_, err = st.Recv()
		}
		return FromRPC(err)
	}
	if err := exits(w.coordinator); err == nil || !strings.Contains(err.Error(), "does not tell of exits") {
		t.Errorf("Exits from the coordinator: %v, want the service's own refusal (no Exiting)", err)
	}
	if err := exits(w.shim); !errors.Is(err, ErrPermission) {
		t.Errorf("Exits from a shim's certificate: %v, want ErrPermission", err)
	}

	if _, err := ReceiveImages(ctx, addr, w.shim, req, func(ImageChunk) error { return nil }); err != nil {
		t.Errorf("images to a shim: %v", err)
	}
	<-is.asked
	for name, c := range map[string]*tls.Config{"the coordinator": w.coordinator, "another name": w.intruder} {
		_, err := ReceiveImages(ctx, addr, c, req, func(ImageChunk) error {
			t.Errorf("%s got a chunk", name)
			return nil
		})
		if err == nil {
			t.Errorf("images to %s: answered", name)
		}
		if name == "the coordinator" && !errors.Is(err, ErrPermission) {
			t.Errorf("images to %s: %v, want ErrPermission", name, err)
		}
	}
	select {
	case <-is.asked:
		t.Error("the image server was asked for a refused client")
	default:
	}
}
