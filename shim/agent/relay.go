package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/coordinator"
)

// The user socket (`torpor shim --user-socket`): users of a compute node,
// whose coordinator runs on another host, reach it through their host's
// shim. The shim reads the caller's uid from SO_PEERCRED, as the coordinator
// does on its own socket, and forwards the call unchanged over its mutual-TLS
// connection with that uid in the call's metadata (coordinator.RelayUIDKey).
// The coordinator authorizes it exactly as a call on its own socket. The
// shim neither decodes nor checks the messages: it moves frames.

// frame is one message of a relayed call, still encoded.
type frame struct{ b []byte }

// rawCodec passes encoded messages through. Its name is "proto", the content
// subtype both ends of a relayed call use.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("relay: cannot encode %T", v)
	}
	return f.b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("relay: cannot decode into %T", v)
	}
	f.b = append(f.b[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// shimOnly are the coordinator's methods that only shims call: a user's call
// of them is refused here, before it gets a shim's certificate.
var shimOnly = map[string]bool{"Register": true, "Fence": true}

// relay forwards users' calls to the coordinator.
type relay struct {
	conn *grpc.ClientConn
	host string
	log  *slog.Logger
}

func (r *relay) handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	prefix := "/" + apiv1.Coordinator_ServiceDesc.ServiceName + "/"
	if !ok || !strings.HasPrefix(method, prefix) {
		return status.Errorf(codes.Unimplemented, "the shim relays only the coordinator's service, not %s", method)
	}
	if shimOnly[strings.TrimPrefix(method, prefix)] {
		return status.Errorf(codes.PermissionDenied, "%s is for shims only", method)
	}
	p, ok := peer.FromContext(ss.Context())
	if !ok {
		return status.Error(codes.PermissionDenied, "no peer")
	}
	pc, ok := p.AuthInfo.(coordinator.PeerCred)
	if !ok {
		return status.Error(codes.PermissionDenied, "the user socket needs SO_PEERCRED")
	}
	// Of the caller's metadata only the Slurm job goes on: the relay keys
	// are the shim's to set.
	out := metadata.MD{}
	in, _ := metadata.FromIncomingContext(ss.Context())
	if v := in.Get(coordinator.SlurmJobKey); len(v) == 1 {
		out.Set(coordinator.SlurmJobKey, v[0])
	}
	out.Set(coordinator.RelayUIDKey, strconv.Itoa(pc.UID))
	out.Set(coordinator.RelayHostKey, r.host)
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ss.Context(), out))
	defer cancel()
	cs, err := r.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	r.log.Debug("relaying a user's call", "method", method, "uid", pc.UID, "pid", pc.PID)
	go func() {
		for {
			var f frame
			if err := ss.RecvMsg(&f); err != nil {
				if errors.Is(err, io.EOF) {
					_ = cs.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := cs.SendMsg(&f); err != nil {
				return // RecvMsg below reports why
			}
		}
	}()
	headerSent := false
	for {
		var f frame
		err := cs.RecvMsg(&f)
		if !headerSent {
			if h, herr := cs.Header(); herr == nil && len(h) > 0 {
				_ = ss.SendHeader(h)
			}
			headerSent = true
		}
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(&f); err != nil {
			return err
		}
	}
}

// listenUsers opens the user socket at path: a unix socket anyone on the
// host may connect to (the caller is known from SO_PEERCRED). A socket left
// there by an earlier shim is replaced; any other file is not touched.
func listenUsers(path string) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("user socket %q: give an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("user socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("user socket %s: a file that is not a socket is there; remove it or choose another path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("user socket: remove the old one: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("user socket: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		lis.Close()
		return nil, fmt.Errorf("user socket: %w", err)
	}
	return lis, nil
}

// serveUsers relays the calls that arrive on lis to the coordinator over
// conn until ctx ends.
func serveUsers(ctx context.Context, lis net.Listener, conn *grpc.ClientConn, host string, log *slog.Logger) {
	r := &relay{conn: conn, host: host, log: log}
	gs := grpc.NewServer(grpc.Creds(coordinator.PeerCredentials{}), grpc.UnknownServiceHandler(r.handle), grpc.ForceServerCodec(rawCodec{}))
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	_ = gs.Serve(lis)
}
