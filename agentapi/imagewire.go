package agentapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/internal/pki"
)

// Images move between shims over the shim's own mutual-TLS port, but not
// through gRPC: a client that offers the ALPN protocol ImagesALPN instead of
// "h2" gets the image protocol on that connection. gRPC marshals every chunk
// into a message, frames it into 16 KiB HTTP/2 frames under flow control and
// copies it twice more on the way back out; on 2 cores that was a third of
// the CPU a transfer cost (BenchmarkFetchImages: 509 MB/s over gRPC).
//
// The image protocol, after the TLS handshake:
//
//	client: u32 length, an apiv1.ImagesRequest (protobuf), then nothing
//	server: frames, until an end frame
//	  'D' u16 name length, name, u64 offset, u32 data length, data
//	  'S' u16 length, the node manifest's SHA-256 (the end: success)
//	  'E' u32 gRPC code, u16 length, message    (the end: failure)
//
// Only shims ask: the peer's certificate must be the CA's shim certificate
// (pki.ShimName); the Shim service takes only the coordinator's
// (pki.CoordinatorName).

// ImagesALPN is the ALPN protocol of the image protocol.
const ImagesALPN = "torpor-images/1"

// Limits of the image protocol, checked by both ends.
const (
	maxRequest   = 64 << 10
	maxChunkData = 4 << 20
	maxMessage   = 64 << 10
)

const (
	frameData    = 'D'
	frameSum     = 'S'
	frameFailure = 'E'
)

// handshakeTimeout bounds a client's TLS handshake on the shim's port.
const handshakeTimeout = 10 * time.Second

// ShimServer serves the Shim service over gRPC and the image protocol on one
// TLS port, told apart by ALPN.
type ShimServer struct {
	tls  *tls.Config
	srv  Server
	grpc *grpc.Server

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // image connections and handshakes
	closed bool
	accept chan net.Conn
	done   chan struct{}
}

// NewShimServer returns a server of srv whose clients must pass tlsConf (a
// server configuration that requires client certificates).
func NewShimServer(tlsConf *tls.Config, srv Server) *ShimServer {
	// Each protocol checks which of the two it takes (coordinatorOnly,
	// serveImages); no other certificate of the CA gets past the handshake.
	c := pki.RequirePeer(tlsConf, pki.CoordinatorName, pki.ShimName)
	c.NextProtos = []string{ImagesALPN, "h2"}
	s := &ShimServer{tls: c, srv: srv, conns: map[net.Conn]struct{}{}, accept: make(chan net.Conn), done: make(chan struct{})}
	s.grpc = grpc.NewServer(grpc.Creds(handshaken{}),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := coordinatorOnly(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := coordinatorOnly(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}))
	apiv1.RegisterShimServer(s.grpc, srv)
	return s
}

// coordinatorOnly refuses a call of the Shim service from any certificate
// but the coordinator's (pki.CoordinatorName): a shim's certificate, which
// every shim host holds, does not let its holder drive another host's shim.
func coordinatorOnly(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, "the Shim service takes calls from the coordinator only: no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return status.Error(codes.PermissionDenied, "the Shim service takes calls from the coordinator only: not over mutual TLS")
	}
	if err := pki.CheckPeer(ti.State, pki.CoordinatorName); err != nil {
		return status.Errorf(codes.PermissionDenied, "the Shim service takes calls from the coordinator only: %v", err)
	}
	return nil
}

// Serve accepts connections on lis until Stop, or until lis fails.
func (s *ShimServer) Serve(lis net.Listener) error {
	gl := &chanListener{addr: lis.Addr(), conns: s.accept, done: s.done}
	go func() { _ = s.grpc.Serve(gl) }()
	go func() {
		<-s.done
		lis.Close()
	}()
	for {
		conn, err := lis.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if !s.track(conn) {
			conn.Close()
			return nil
		}
		go s.handshake(conn)
	}
}

// Stop closes the listener and every connection.
func (s *ShimServer) Stop() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	conns := s.conns
	s.conns = map[net.Conn]struct{}{}
	s.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	s.grpc.Stop()
}

func (s *ShimServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *ShimServer) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// handshake does conn's TLS handshake and hands it to gRPC or serves images.
func (s *ShimServer) handshake(conn net.Conn) {
	bc := &bufConn{Conn: conn}
	tc := tls.Server(bc, s.tls)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.untrack(conn)
		conn.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == ImagesALPN {
		defer s.untrack(conn)
		defer tc.Close()
		bc.mu.Lock()
		bc.w = bufio.NewWriterSize(conn, wireBuffer)
		bc.mu.Unlock()
		// Images go to shims only: the coordinator never asks for them.
		var refuse error
		if err := pki.CheckPeer(tc.ConnectionState(), pki.ShimName); err != nil {
			refuse = fmt.Errorf("%w: the image protocol serves shims only: %v", ErrPermission, err)
		}
		s.serveImages(tc, bc, refuse)
		return
	}
	s.untrack(conn) // gRPC closes it from here on
	select {
	case s.accept <- tc:
	case <-s.done:
		tc.Close()
	}
}

// serveImages answers one image request on conn, with refuse if it is set.
// TLS writes each record (at most 16 KiB) to conn by itself: flush sends
// what the frames written since the last flush made of them at once.
func (s *ShimServer) serveImages(conn *tls.Conn, flush interface{ Flush() error }, refuse error) {
	var n uint32
	if err := binary.Read(conn, binary.BigEndian, &n); err != nil || n > maxRequest {
		return
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(conn, b); err != nil {
		return
	}
	if refuse != nil {
		writeFailure(conn, refuse)
		_ = flush.Flush()
		return
	}
	req := &apiv1.ImagesRequest{}
	if err := proto.Unmarshal(b, req); err != nil {
		writeFailure(conn, fmt.Errorf("%w: an image request that is no ImagesRequest: %v", ErrInvalid, err))
		_ = flush.Flush()
		return
	}
	// The client sends nothing more: a read that returns means it is gone.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _ = conn.Read(make([]byte, 1))
		cancel()
	}()
	sum, err := s.srv.sendImages(ctx, req, func(c ImageChunk) error {
		if err := writeChunk(conn, c); err != nil {
			return err
		}
		return flush.Flush()
	})
	if err != nil {
		writeFailure(conn, err)
		_ = flush.Flush()
		return
	}
	if len(sum) > maxMessage {
		sum = sum[:maxMessage]
	}
	hdr := binary.BigEndian.AppendUint16([]byte{frameSum}, uint16(len(sum)))
	_, _ = conn.Write(append(hdr, sum...))
	_ = flush.Flush()
}

// sendImages sends the images req asks for through send and returns the
// node manifest's SHA-256.
func (s Server) sendImages(ctx context.Context, req *apiv1.ImagesRequest, send func(ImageChunk) error) (string, error) {
	if s.ImageServer == nil {
		return "", fmt.Errorf("%w: this shim has no image directory (torpor shim --image-dir)", ErrInvalid)
	}
	if req.Stored {
		return s.ImageServer.SendStored(ctx, req.Checkpoint, req.GetRef().GetNode(), send)
	}
	return s.ImageServer.SendImages(ctx, RefFromPB(req.Ref), req.Checkpoint, send)
}

// writeChunk writes c as one data frame: its header, then its data as they
// are (TLS encrypts them into records without another copy).
func writeChunk(w io.Writer, c ImageChunk) error {
	if len(c.Name) > maxMessage || len(c.Data) > maxChunkData {
		return fmt.Errorf("image chunk of %s too large (%d bytes)", c.Name, len(c.Data))
	}
	hdr := make([]byte, 0, 1+2+len(c.Name)+8+4)
	hdr = append(hdr, frameData)
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(len(c.Name)))
	hdr = append(hdr, c.Name...)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(c.Offset))
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(c.Data)))
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	_, err := w.Write(c.Data)
	return err
}

// writeFailure ends a response with err, as a gRPC status would carry it.
func writeFailure(w io.Writer, err error) {
	st, _ := status.FromError(ToRPC(err))
	msg := st.Message()
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	b := []byte{frameFailure}
	b = binary.BigEndian.AppendUint32(b, uint32(st.Code()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	_, _ = w.Write(append(b, msg...))
}

// ReceiveImages asks the shim at addr (host:port) for the images req names,
// over the image protocol with tlsConf (a client configuration; its server
// name is set to addr's host), and calls recv for each chunk in the order
// sent. A chunk's Data is only valid during its call. It returns the node
// manifest's SHA-256 the server sent last.
func ReceiveImages(ctx context.Context, addr string, tlsConf *tls.Config, req *apiv1.ImagesRequest, recv func(ImageChunk) error) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: images from %q: %v", ErrInvalid, addr, err)
	}
	c := tlsConf.Clone()
	c.ServerName = host
	c.NextProtos = []string{ImagesALPN}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	conn := tls.Client(&bufConn{Conn: raw, r: bufio.NewReaderSize(raw, wireBuffer)}, c)
	defer conn.Close()
	if err := conn.HandshakeContext(ctx); err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sum, err := receive(conn, req, recv)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	return sum, err
}

func receive(conn *tls.Conn, req *apiv1.ImagesRequest, recv func(ImageChunk) error) (string, error) {
	if p := conn.ConnectionState().NegotiatedProtocol; p != ImagesALPN {
		return "", fmt.Errorf("%w: the shim does not speak the image protocol (ALPN %q): is it an older torpor?", ErrInvalid, p)
	}
	b, err := proto.Marshal(req)
	if err != nil {
		return "", err
	}
	if _, err := conn.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)); err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	var data []byte
	cut := func(err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: the connection ended in the middle of the images", ErrUnreachable)
		}
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	for {
		kind, err := br.ReadByte()
		if err != nil {
			return "", cut(err)
		}
		switch kind {
		case frameData:
			name, err := readString16(br)
			if err != nil {
				return "", cut(err)
			}
			var hdr [12]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return "", cut(err)
			}
			off, n := int64(binary.BigEndian.Uint64(hdr[:8])), binary.BigEndian.Uint32(hdr[8:])
			if n > maxChunkData || off < 0 {
				return "", fmt.Errorf("%w: an image chunk of %d bytes at offset %d", ErrCorrupt, n, off)
			}
			data = slices.Grow(data[:0], int(n))[:n]
			if _, err := io.ReadFull(br, data); err != nil {
				return "", cut(err)
			}
			if err := recv(ImageChunk{Name: name, Offset: off, Data: data}); err != nil {
				return "", err
			}
		case frameSum:
			sum, err := readString16(br)
			if err != nil {
				return "", cut(err)
			}
			if sum == "" {
				return "", fmt.Errorf("%w: the images ended with no node manifest digest", ErrCorrupt)
			}
			return sum, nil
		case frameFailure:
			var code uint32
			if err := binary.Read(br, binary.BigEndian, &code); err != nil {
				return "", cut(err)
			}
			msg, err := readString16(br)
			if err != nil {
				return "", cut(err)
			}
			return "", FromRPC(status.Error(codes.Code(code), msg))
		default:
			return "", fmt.Errorf("%w: image protocol frame %q", ErrCorrupt, kind)
		}
	}
}

func readString16(r io.Reader) (string, error) {
	var n uint16
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return "", err
	}
	if int(n) > maxMessage {
		return "", fmt.Errorf("%w: a name of %d bytes", ErrCorrupt, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// wireBuffer is how much of the image protocol goes through one system
// call: TLS reads and writes a record (at most 16 KiB) at a time, and a
// system call per record was more than half a transfer's CPU.
const wireBuffer = 1 << 20

// bufConn buffers the reads of a connection when r is set, and its writes
// when w is set (flushed by the caller). TLS may write from a reading
// goroutine too (an alert, a key update): writes and flushes take mu.
type bufConn struct {
	net.Conn
	r  *bufio.Reader
	mu sync.Mutex
	w  *bufio.Writer
}

func (c *bufConn) Read(p []byte) (int, error) {
	if c.r != nil {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *bufConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w != nil {
		return c.w.Write(p)
	}
	return c.Conn.Write(p)
}

// Flush sends what the buffer holds.
func (c *bufConn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil {
		return nil
	}
	return c.w.Flush()
}

// chanListener hands gRPC the connections whose handshake chose "h2".
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// handshaken is gRPC's view of a connection whose TLS handshake ShimServer
// already did: it reports that handshake's state as any TLS connection's.
type handshaken struct{}

func (handshaken) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("not a TLS connection")
	}
	return conn, credentials.TLSInfo{State: tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("ShimServer's credentials only serve")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}
func (h handshaken) Clone() credentials.TransportCredentials { return h }
func (handshaken) OverrideServerName(string) error           { return nil }
