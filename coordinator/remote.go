package coordinator

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

// RemoteAgent is an Agent reached over gRPC: the Shim service of one host.
type RemoteAgent struct {
	Client apiv1.ShimClient
}

var _ Agent = RemoteAgent{}

func pbNode(n NodeSpec) *apiv1.NodeSpec {
	return &apiv1.NodeSpec{Name: n.Name, Host: n.Host, Ip: n.IP, Hostname: n.Hostname, Argv: n.Argv, Env: n.Env, Dir: n.Dir, User: pbCreds(n.User)}
}

func pbCreds(c *Creds) *apiv1.Creds {
	if c == nil {
		return nil
	}
	p := &apiv1.Creds{Uid: int64(c.UID), Gid: int64(c.GID)}
	for _, g := range c.Groups {
		p.Groups = append(p.Groups, int64(g))
	}
	return p
}

func credsFromPB(p *apiv1.Creds) *Creds {
	if p == nil {
		return nil
	}
	c := &Creds{UID: int(p.Uid), GID: int(p.Gid)}
	for _, g := range p.Groups {
		c.Groups = append(c.Groups, int(g))
	}
	return c
}

// NodeFromPB converts a wire job-node.
func NodeFromPB(n *apiv1.NodeSpec) NodeSpec {
	if n == nil {
		return NodeSpec{}
	}
	return NodeSpec{Name: n.Name, Host: n.Host, IP: n.Ip, Hostname: n.Hostname, Argv: n.Argv, Env: n.Env, Dir: n.Dir, User: credsFromPB(n.User)}
}

func pbRef(r NodeRef) *apiv1.NodeRef { return &apiv1.NodeRef{Job: r.Job, Node: r.Node} }

// fromRPC turns a gRPC status back into an error that errors.Is can test.
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.DeadlineExceeded:
		return errors.Join(errors.New(st.Message()), context.DeadlineExceeded)
	case codes.Canceled:
		return errors.Join(errors.New(st.Message()), context.Canceled)
	case codes.NotFound:
		return errors.Join(errors.New(st.Message()), ErrNotFound)
	case codes.FailedPrecondition:
		return errors.Join(errors.New(st.Message()), ErrState)
	case codes.InvalidArgument:
		return errors.Join(errors.New(st.Message()), ErrInvalid)
	case codes.PermissionDenied:
		return errors.Join(errors.New(st.Message()), ErrPermission)
	case codes.Unavailable:
		return errors.Join(errors.New(st.Message()), ErrUnreachable)
	}
	return errors.New(st.Message())
}

// ToRPC maps an error to a gRPC status at the RPC edge.
func ToRPC(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrState):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, ErrPermission):
		code = codes.PermissionDenied
	case errors.Is(err, ErrUnreachable):
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}

func (r RemoteAgent) Start(ctx context.Context, job string, n NodeSpec) error {
	_, err := r.Client.Start(ctx, &apiv1.StartRequest{Job: job, Node: pbNode(n)})
	return fromRPC(err)
}

func (r RemoteAgent) Prepare(ctx context.Context, ref NodeRef, ckpt string) error {
	_, err := r.Client.Prepare(ctx, &apiv1.PrepareRequest{Ref: pbRef(ref), Checkpoint: ckpt})
	return fromRPC(err)
}

func (r RemoteAgent) Freeze(ctx context.Context, ref NodeRef) error {
	_, err := r.Client.Freeze(ctx, pbRef(ref))
	return fromRPC(err)
}

func (r RemoteAgent) Drain(ctx context.Context, ref NodeRef) (DrainResult, error) {
	rep, err := r.Client.Drain(ctx, pbRef(ref))
	if err != nil {
		return DrainResult{}, fromRPC(err)
	}
	return DrainResult{Sockets: int(rep.Sockets), QueuedBytes: rep.QueuedBytes}, nil
}

func (r RemoteAgent) Lock(ctx context.Context, ref NodeRef) error {
	_, err := r.Client.Lock(ctx, pbRef(ref))
	return fromRPC(err)
}

func (r RemoteAgent) Dump(ctx context.Context, ref NodeRef, req DumpRequest) (DumpResult, error) {
	rep, err := r.Client.Dump(ctx, &apiv1.DumpRequest{Ref: pbRef(ref), Dir: req.Dir, LeaveRunning: req.LeaveRunning, Checkpoint: req.Checkpoint})
	if err != nil {
		return DumpResult{}, fromRPC(err)
	}
	return DumpResult{Bytes: rep.Bytes, Files: int(rep.Files), Manifest: rep.Manifest, CRIUTime: time.Duration(rep.CriuNanos)}, nil
}

func (r RemoteAgent) Unlock(ctx context.Context, ref NodeRef) error {
	_, err := r.Client.Unlock(ctx, pbRef(ref))
	return fromRPC(err)
}

func (r RemoteAgent) Thaw(ctx context.Context, ref NodeRef) error {
	_, err := r.Client.Thaw(ctx, pbRef(ref))
	return fromRPC(err)
}

func (r RemoteAgent) Restore(ctx context.Context, job string, n NodeSpec, dir string) error {
	_, err := r.Client.Restore(ctx, &apiv1.RestoreRequest{Job: job, Node: pbNode(n), Dir: dir})
	return fromRPC(err)
}

func (r RemoteAgent) Destroy(ctx context.Context, ref NodeRef) error {
	_, err := r.Client.Destroy(ctx, pbRef(ref))
	return fromRPC(err)
}

func (r RemoteAgent) Status(ctx context.Context, ref NodeRef) (NodeStatus, error) {
	rep, err := r.Client.Status(ctx, pbRef(ref))
	if err != nil {
		return NodeStatus{}, fromRPC(err)
	}
	return NodeStatus{Running: rep.Running, Exited: rep.Exited, ExitCode: int(rep.ExitCode), Message: rep.Message}, nil
}

// AgentServer serves the Shim gRPC service from a local Agent (the shim's
// host implementation), mapping errors to gRPC codes at the edge.
type AgentServer struct {
	apiv1.UnimplementedShimServer
	Agent Agent
}

func refOf(r *apiv1.NodeRef) NodeRef { return NodeRef{Job: r.GetJob(), Node: r.GetNode()} }

func (s AgentServer) Start(ctx context.Context, req *apiv1.StartRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Start(ctx, req.Job, NodeFromPB(req.Node)))
}
func (s AgentServer) Prepare(ctx context.Context, req *apiv1.PrepareRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Prepare(ctx, refOf(req.Ref), req.Checkpoint))
}
func (s AgentServer) Freeze(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Freeze(ctx, refOf(r)))
}
func (s AgentServer) Drain(ctx context.Context, r *apiv1.NodeRef) (*apiv1.DrainReply, error) {
	res, err := s.Agent.Drain(ctx, refOf(r))
	return &apiv1.DrainReply{Sockets: int32(res.Sockets), QueuedBytes: res.QueuedBytes}, ToRPC(err)
}
func (s AgentServer) Lock(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Lock(ctx, refOf(r)))
}
func (s AgentServer) Dump(ctx context.Context, req *apiv1.DumpRequest) (*apiv1.DumpReply, error) {
	res, err := s.Agent.Dump(ctx, refOf(req.Ref), DumpRequest{Dir: req.Dir, LeaveRunning: req.LeaveRunning, Checkpoint: req.Checkpoint})
	return &apiv1.DumpReply{Bytes: res.Bytes, Files: int32(res.Files), Manifest: res.Manifest, CriuNanos: int64(res.CRIUTime)}, ToRPC(err)
}
func (s AgentServer) Unlock(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Unlock(ctx, refOf(r)))
}
func (s AgentServer) Thaw(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Thaw(ctx, refOf(r)))
}
func (s AgentServer) Restore(ctx context.Context, req *apiv1.RestoreRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Restore(ctx, req.Job, NodeFromPB(req.Node), req.Dir))
}
func (s AgentServer) Destroy(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Destroy(ctx, refOf(r)))
}
func (s AgentServer) Status(ctx context.Context, r *apiv1.NodeRef) (*apiv1.NodeStatus, error) {
	st, err := s.Agent.Status(ctx, refOf(r))
	return &apiv1.NodeStatus{Running: st.Running, Exited: st.Exited, ExitCode: int32(st.ExitCode), Message: st.Message}, ToRPC(err)
}
