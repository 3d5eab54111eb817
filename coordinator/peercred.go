package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/torpor-hpc/torpor/agentapi"
)

// PeerCred is the AuthInfo of a connection accepted on the coordinator's
// unix socket: the kernel's word (SO_PEERCRED) on who is calling.
type PeerCred struct {
	credentials.CommonAuthInfo
	UID, GID, PID int
}

// AuthType implements credentials.AuthInfo.
func (PeerCred) AuthType() string { return "peercred" }

// PeerCredentials are gRPC transport credentials for a unix socket: the
// server side records the caller's uid from SO_PEERCRED, the client side
// adds nothing. They are no substitute for TLS on a network socket.
type PeerCredentials struct{}

var _ credentials.TransportCredentials = PeerCredentials{}

// ServerHandshake reads the peer's credentials from the socket.
func (PeerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("peer credentials need a unix socket, got %T", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var (
		cred *unix.Ucred
		cerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if cerr != nil {
		return nil, nil, fmt.Errorf("read SO_PEERCRED: %w", cerr)
	}
	return conn, PeerCred{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid),
	}, nil
}

// ClientHandshake leaves the connection as it is.
func (PeerCredentials) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, PeerCred{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (PeerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p PeerCredentials) Clone() credentials.TransportCredentials { return p }
func (PeerCredentials) OverrideServerName(string) error           { return nil }

// callerUID returns the uid of the caller of an RPC that arrived on the unix
// socket. Calls that arrived any other way (mutual TLS from a shim) have no
// user and get an error.
func callerUID(ctx context.Context) (int, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return 0, errors.New("no peer information")
	}
	pc, ok := p.AuthInfo.(PeerCred)
	if !ok {
		return 0, fmt.Errorf("%w: user commands are accepted only on the coordinator's unix socket", agentapi.ErrPermission)
	}
	return pc.UID, nil
}
