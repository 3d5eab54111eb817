package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
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

// Metadata of a user's call relayed by a shim (`torpor shim --user-socket`):
// the shim read the caller's uid from SO_PEERCRED on its own unix socket and
// forwards the call over its mutual-TLS connection with these keys. They are
// believed only on such a connection: a shim holds a certificate of the
// cluster's CA and runs as root on its host, which torpor trusts with that
// host's users. A relayed uid 0 is refused: root on a compute node does not
// become root on the other hosts through torpor.
const (
	// RelayUIDKey carries the caller's uid.
	RelayUIDKey = "torpor-relay-uid"
	// RelayHostKey names the host whose shim relayed the call (logged).
	RelayHostKey = "torpor-relay-host"
)

// callerUID returns the uid of the caller of an RPC: the kernel's word on
// the coordinator's unix socket, or a shim's relay of it over mutual TLS.
// Calls that arrived any other way (a shim's own calls) have no user and get
// an error.
func callerUID(ctx context.Context) (int, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return 0, errors.New("no peer information")
	}
	switch ai := p.AuthInfo.(type) {
	case PeerCred:
		return ai.UID, nil
	case credentials.TLSInfo:
		md, _ := metadata.FromIncomingContext(ctx)
		v := md.Get(RelayUIDKey)
		if len(v) != 1 {
			break
		}
		uid, err := strconv.Atoi(v[0])
		if err != nil || uid < 0 {
			return 0, fmt.Errorf("%w: relayed uid %q", agentapi.ErrInvalid, v[0])
		}
		if uid == 0 {
			// Root of one compute node is root there, not on the others:
			// a relayed root would run jobs as root on every host.
			return 0, fmt.Errorf("%w: root's commands are taken only on the coordinator's own socket, not relayed from a compute node's shim; run the command as root on the coordinator's host", agentapi.ErrPermission)
		}
		return uid, nil
	}
	return 0, fmt.Errorf("%w: user commands are accepted only on the coordinator's unix socket or relayed by a shim's (torpor shim --user-socket)", agentapi.ErrPermission)
}
