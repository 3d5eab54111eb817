// Package client talks to a torpor coordinator over its unix socket: it finds
// and dials the socket, turns the coordinator's gRPC errors into plain ones,
// and supervises a job the way `torpor run` does (Supervise).
package client

import (
	"context"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/coordinator"
)

// DefaultSocket is where the coordinator listens for the CLI.
const DefaultSocket = "/run/torpor/coordinator.sock"

// DefaultUserSocket is where a compute node's shim relays the CLI's calls to
// the coordinator (`torpor shim --user-socket`).
const DefaultUserSocket = "/run/torpor/user.sock"

// SocketPath is the coordinator's socket: flagVal if not empty, else
// $TORPOR_SOCKET if set, else DefaultSocket, or DefaultUserSocket on a host
// that has a shim's relay and no coordinator socket.
func SocketPath(flagVal string) string {
	if flagVal != "" {
		return flagVal
	}
	if v := os.Getenv("TORPOR_SOCKET"); v != "" {
		return v
	}
	if _, err := os.Stat(DefaultSocket); err != nil {
		if _, err := os.Stat(DefaultUserSocket); err == nil {
			return DefaultUserSocket
		}
	}
	return DefaultSocket
}

// Dial connects to the coordinator's unix socket. Call done to close the
// connection.
func Dial(sock string) (cl apiv1.CoordinatorClient, done func(), err error) {
	if _, err := os.Stat(sock); err != nil {
		return nil, nil, fmt.Errorf("no coordinator at %s (start one with `torpor coordinator`, or run a job with `torpor run`, which embeds one; set --socket or $TORPOR_SOCKET for another): %w", sock, err)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(coordinator.PeerCredentials{}),
		grpc.WithUnaryInterceptor(slurmUnary), grpc.WithStreamInterceptor(slurmStream))
	if err != nil {
		return nil, nil, err
	}
	return apiv1.NewCoordinatorClient(conn), func() { conn.Close() }, nil
}

// Listens reports whether a coordinator answers on sock (a socket file left
// by a coordinator that died does not count).
func Listens(sock string) bool { return coordinator.SocketAnswers(sock) }

// RPCErr turns a gRPC error into a plain one for the user: the status
// message, without the gRPC code. Other errors, and nil, are returned as is.
func RPCErr(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}

// slurmJob is the Slurm job this process runs in, sent with every call: a
// coordinator that places jobs by Slurm allocation (--slurm) asks Slurm
// about it.
func slurmJob(ctx context.Context) context.Context {
	if id := os.Getenv("SLURM_JOB_ID"); id != "" {
		return metadata.AppendToOutgoingContext(ctx, coordinator.SlurmJobKey, id)
	}
	return ctx
}

func slurmUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(slurmJob(ctx), method, req, reply, cc, opts...)
}

func slurmStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(slurmJob(ctx), desc, cc, method, opts...)
}
