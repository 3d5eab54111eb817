package agentapi

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

// Client is an Agent reached over gRPC: the Shim service of one host.
type Client struct {
	Shim apiv1.ShimClient
	// Verifies says the shim registered with verifies_images: it verifies
	// a restart's images against RestoreRequest.NodeManifestSHA256.
	Verifies bool
	// PostCopies says the shim registered with post_copy: its CRIU and
	// kernel restore pages lazily.
	PostCopies bool
	// Streams says the shim registered with streams_images, and Addr is
	// where its Shim service listens (what other shims fetch images from).
	Streams bool
	Addr    string
}

// VerifiesImages implements ImageVerifier.
func (c Client) VerifiesImages() bool { return c.Verifies }

// Holds implements CheckpointHolder: a shim that streams images has a
// checkpoint store.
func (c Client) Holds() bool { return c.Streams }

// PostCopy implements PostCopier.
func (c Client) PostCopy() bool { return c.PostCopies }

// ImagesAddress implements ImageStreamer.
func (c Client) ImagesAddress() string {
	if !c.Streams {
		return ""
	}
	return c.Addr
}

var _ Agent = Client{}

// NodeToPB converts a job-node to its wire form.
func NodeToPB(n NodeSpec) *apiv1.NodeSpec {
	return &apiv1.NodeSpec{Name: n.Name, Host: n.Host, Ip: n.IP, Hostname: n.Hostname, Argv: n.Argv, Env: n.Env, Dir: n.Dir, User: credsToPB(n.User),
		Keep: n.Keep, KeepMax: n.KeepMax}
}

// NodeFromPB converts a wire job-node.
func NodeFromPB(n *apiv1.NodeSpec) NodeSpec {
	if n == nil {
		return NodeSpec{}
	}
	return NodeSpec{Name: n.Name, Host: n.Host, IP: n.Ip, Hostname: n.Hostname, Argv: n.Argv, Env: n.Env, Dir: n.Dir, User: credsFromPB(n.User),
		Keep: n.Keep, KeepMax: n.KeepMax}
}

func credsToPB(c *Creds) *apiv1.Creds {
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

// RefToPB and RefFromPB convert a job-node reference to and from its
// wire form.
func RefToPB(r NodeRef) *apiv1.NodeRef { return &apiv1.NodeRef{Job: r.Job, Node: r.Node} }

func RefFromPB(r *apiv1.NodeRef) NodeRef { return NodeRef{Job: r.GetJob(), Node: r.GetNode()} }

func (c Client) Start(ctx context.Context, job string, n NodeSpec) error {
	_, err := c.Shim.Start(ctx, &apiv1.StartRequest{Job: job, Node: NodeToPB(n)})
	return FromRPC(err)
}

func (c Client) Prepare(ctx context.Context, ref NodeRef, ckpt string) error {
	_, err := c.Shim.Prepare(ctx, &apiv1.PrepareRequest{Ref: RefToPB(ref), Checkpoint: ckpt})
	return FromRPC(err)
}

func (c Client) Freeze(ctx context.Context, ref NodeRef) error {
	_, err := c.Shim.Freeze(ctx, RefToPB(ref))
	return FromRPC(err)
}

func (c Client) Drain(ctx context.Context, ref NodeRef) (DrainResult, error) {
	rep, err := c.Shim.Drain(ctx, RefToPB(ref))
	if err != nil {
		return DrainResult{}, FromRPC(err)
	}
	return DrainResult{Sockets: int(rep.Sockets), QueuedBytes: rep.QueuedBytes}, nil
}

func (c Client) Lock(ctx context.Context, ref NodeRef) error {
	_, err := c.Shim.Lock(ctx, RefToPB(ref))
	return FromRPC(err)
}

func (c Client) Dump(ctx context.Context, ref NodeRef, req DumpRequest) (DumpResult, error) {
	rep, err := c.Shim.Dump(ctx, &apiv1.DumpRequest{Ref: RefToPB(ref), Dir: req.Dir, SharedDir: req.Shared, LeaveRunning: req.LeaveRunning, Checkpoint: req.Checkpoint,
		Compress: req.Compress, PostCopyAbove: req.PostCopyAbove, Local: req.Local, Store: req.Store})
	if err != nil {
		return DumpResult{}, FromRPC(err)
	}
	return DumpResult{Bytes: rep.Bytes, Files: int(rep.Files), CRIUTime: time.Duration(rep.CriuNanos), Memory: rep.MemoryBytes, PageServer: rep.PageServer,
		NodeManifestSHA256: rep.NodeManifestSha256}, nil
}

func (c Client) Unlock(ctx context.Context, ref NodeRef) error {
	_, err := c.Shim.Unlock(ctx, RefToPB(ref))
	return FromRPC(err)
}

func (c Client) Thaw(ctx context.Context, ref NodeRef) error {
	_, err := c.Shim.Thaw(ctx, RefToPB(ref))
	return FromRPC(err)
}

func (c Client) RestoreFiles(ctx context.Context, job string, n NodeSpec, req RestoreRequest) (RestoreFilesResult, error) {
	rep, err := c.Shim.RestoreFiles(ctx, &apiv1.RestoreRequest{Job: job, Node: NodeToPB(n), Dir: req.Dir, Checkpoint: req.Checkpoint, NodeManifestSha256: req.NodeManifestSHA256,
		Stored: req.Stored})
	if err != nil {
		return RestoreFilesResult{}, FromRPC(err)
	}
	return RestoreFilesResult{Moved: rep.Moved}, nil
}

func (c Client) Restore(ctx context.Context, job string, n NodeSpec, req RestoreRequest) error {
	_, err := c.Shim.Restore(ctx, &apiv1.RestoreRequest{Job: job, Node: NodeToPB(n), Dir: req.Dir, Checkpoint: req.Checkpoint, NodeManifestSha256: req.NodeManifestSHA256,
		PageServer: req.PageServer, From: req.From, Stored: req.Stored})
	return FromRPC(err)
}

func (c Client) Destroy(ctx context.Context, ref NodeRef) error {
	_, err := c.Shim.Destroy(ctx, RefToPB(ref))
	return FromRPC(err)
}

func (c Client) Status(ctx context.Context, ref NodeRef) (NodeStatus, error) {
	rep, err := c.Shim.Status(ctx, RefToPB(ref))
	if err != nil {
		return NodeStatus{}, FromRPC(err)
	}
	return NodeStatus{Running: rep.Running, Exited: rep.Exited, ExitCode: int(rep.ExitCode), Message: rep.Message}, nil
}

func (c Client) Pages(ctx context.Context, ref NodeRef) error {
	_, err := c.Shim.Pages(ctx, RefToPB(ref))
	return FromRPC(err)
}

func (c Client) Sync(ctx context.Context, ref NodeRef, checkpoint string) error {
	_, err := c.Shim.Sync(ctx, &apiv1.SyncRequest{Ref: RefToPB(ref), Checkpoint: checkpoint})
	return FromRPC(err)
}

func (c Client) Fetch(ctx context.Context, handle, node, from, sum string, rate int64) (int64, error) {
	rep, err := c.Shim.Fetch(ctx, &apiv1.FetchRequest{Checkpoint: handle, Node: node, From: from, NodeManifestSha256: sum, Rate: rate})
	if err != nil {
		return 0, FromRPC(err)
	}
	return rep.Bytes, nil
}

func (c Client) Held(ctx context.Context, job string, verify bool) ([]HeldImages, error) {
	rep, err := c.Shim.Held(ctx, &apiv1.HeldRequest{Job: job, Verify: verify})
	if err != nil {
		return nil, FromRPC(err)
	}
	out := make([]HeldImages, 0, len(rep.Images))
	for _, h := range rep.Images {
		out = append(out, HeldImages{Checkpoint: h.Checkpoint, Node: h.Node, NodeManifestSHA256: h.NodeManifestSha256, Corrupt: h.Corrupt})
	}
	return out, nil
}

func (c Client) Drop(ctx context.Context, handle string) error {
	_, err := c.Shim.Drop(ctx, &apiv1.DropRequest{Checkpoint: handle})
	return FromRPC(err)
}

func (c Client) KeepManifest(ctx context.Context, handle string, manifest []byte) error {
	_, err := c.Shim.KeepManifest(ctx, &apiv1.KeepManifestRequest{Checkpoint: handle, Manifest: manifest})
	return FromRPC(err)
}

func (c Client) Manifests(ctx context.Context) (map[string][]byte, error) {
	rep, err := c.Shim.Manifests(ctx, &apiv1.Empty{})
	if err != nil {
		return nil, FromRPC(err)
	}
	out := make(map[string][]byte, len(rep.Manifests))
	for _, m := range rep.Manifests {
		out[m.Checkpoint] = m.Manifest
	}
	return out, nil
}

var _ CheckpointHolder = Client{}

func (c Client) ReadOutput(ctx context.Context, ref NodeRef, off, max int64) ([]byte, int64, error) {
	rep, err := c.Shim.Output(ctx, &apiv1.NodeOutputRequest{Ref: RefToPB(ref), Offset: off, Max: max})
	if err != nil {
		return nil, 0, FromRPC(err)
	}
	return rep.Data, rep.Size, nil
}

var _ OutputReader = Client{}

// WatchExits implements ExitNotifier over the Exits stream. A shim that
// does not serve it fails the watch at once (Unimplemented).
func (c Client) WatchExits(ctx context.Context, live func(), exited func(NodeRef)) error {
	st, err := c.Shim.Exits(ctx, &apiv1.Empty{})
	if err != nil {
		return FromRPC(err)
	}
	for first := true; ; first = false {
		r, err := st.Recv()
		if err != nil {
			return FromRPC(err)
		}
		if first {
			live() // the shim's marker: it listens
			continue
		}
		exited(RefFromPB(r))
	}
}

var _ ExitNotifier = Client{}

// Server serves the Shim gRPC service from a local Agent (the shim's host
// implementation), mapping errors to gRPC codes at the edge.
type Server struct {
	apiv1.UnimplementedShimServer
	Agent Agent
	// Images, if set, serves the images of local dumps to other shims.
	ImageServer ImageServer
	// Holder, if set, is the shim's checkpoint store (Fetch, Held, Drop).
	Holder CheckpointHolder
	// Outputs, if set, reads job-nodes' output files (Output).
	Outputs OutputReader
	// Exiting, if set, tells of job-nodes' exits as they happen (Exits).
	Exiting ExitNotifier
}

func (s Server) Start(ctx context.Context, req *apiv1.StartRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Start(ctx, req.Job, NodeFromPB(req.Node)))
}

func (s Server) Prepare(ctx context.Context, req *apiv1.PrepareRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Prepare(ctx, RefFromPB(req.Ref), req.Checkpoint))
}

func (s Server) Freeze(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Freeze(ctx, RefFromPB(r)))
}

func (s Server) Drain(ctx context.Context, r *apiv1.NodeRef) (*apiv1.DrainReply, error) {
	res, err := s.Agent.Drain(ctx, RefFromPB(r))
	return &apiv1.DrainReply{Sockets: int32(res.Sockets), QueuedBytes: res.QueuedBytes}, ToRPC(err)
}

func (s Server) Lock(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Lock(ctx, RefFromPB(r)))
}

func (s Server) Dump(ctx context.Context, req *apiv1.DumpRequest) (*apiv1.DumpReply, error) {
	res, err := s.Agent.Dump(ctx, RefFromPB(req.Ref), DumpRequest{Dir: req.Dir, Shared: req.SharedDir, LeaveRunning: req.LeaveRunning, Checkpoint: req.Checkpoint,
		Compress: req.Compress, PostCopyAbove: req.PostCopyAbove, Local: req.Local, Store: req.Store})
	return &apiv1.DumpReply{Bytes: res.Bytes, Files: int32(res.Files), CriuNanos: int64(res.CRIUTime), MemoryBytes: res.Memory, PageServer: res.PageServer,
		NodeManifestSha256: res.NodeManifestSHA256}, ToRPC(err)
}

func (s Server) Unlock(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Unlock(ctx, RefFromPB(r)))
}

func (s Server) Thaw(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Thaw(ctx, RefFromPB(r)))
}

func (s Server) RestoreFiles(ctx context.Context, req *apiv1.RestoreRequest) (*apiv1.RestoreFilesReply, error) {
	res, err := s.Agent.RestoreFiles(ctx, req.Job, NodeFromPB(req.Node), RestoreRequest{Dir: req.Dir, Checkpoint: req.Checkpoint, NodeManifestSHA256: req.NodeManifestSha256,
		Stored: req.Stored})
	return &apiv1.RestoreFilesReply{Moved: res.Moved}, ToRPC(err)
}

func (s Server) Restore(ctx context.Context, req *apiv1.RestoreRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Restore(ctx, req.Job, NodeFromPB(req.Node), RestoreRequest{Dir: req.Dir, Checkpoint: req.Checkpoint, NodeManifestSHA256: req.NodeManifestSha256,
		PageServer: req.PageServer, From: req.From, Stored: req.Stored}))
}

func (s Server) Destroy(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Destroy(ctx, RefFromPB(r)))
}

func (s Server) Status(ctx context.Context, r *apiv1.NodeRef) (*apiv1.NodeStatus, error) {
	st, err := s.Agent.Status(ctx, RefFromPB(r))
	return &apiv1.NodeStatus{Running: st.Running, Exited: st.Exited, ExitCode: int32(st.ExitCode), Message: st.Message}, ToRPC(err)
}

func (s Server) Pages(ctx context.Context, r *apiv1.NodeRef) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Pages(ctx, RefFromPB(r)))
}

func (s Server) Sync(ctx context.Context, req *apiv1.SyncRequest) (*apiv1.Empty, error) {
	return &apiv1.Empty{}, ToRPC(s.Agent.Sync(ctx, RefFromPB(req.Ref), req.Checkpoint))
}

// noStore is the error of a checkpoint-store call to a shim without one.
var noStore = fmt.Errorf("%w: this shim keeps no host-local checkpoints: it has no image directory (torpor shim --image-dir)", ErrInvalid)

func (s Server) Fetch(ctx context.Context, req *apiv1.FetchRequest) (*apiv1.FetchReply, error) {
	if s.Holder == nil {
		return nil, ToRPC(noStore)
	}
	n, err := s.Holder.Fetch(ctx, req.Checkpoint, req.Node, req.From, req.NodeManifestSha256, req.Rate)
	return &apiv1.FetchReply{Bytes: n}, ToRPC(err)
}

func (s Server) Held(ctx context.Context, req *apiv1.HeldRequest) (*apiv1.HeldReply, error) {
	if s.Holder == nil {
		return nil, ToRPC(noStore)
	}
	held, err := s.Holder.Held(ctx, req.Job, req.Verify)
	if err != nil {
		return nil, ToRPC(err)
	}
	rep := &apiv1.HeldReply{}
	for _, h := range held {
		rep.Images = append(rep.Images, &apiv1.HeldImages{Checkpoint: h.Checkpoint, Node: h.Node, NodeManifestSha256: h.NodeManifestSHA256, Corrupt: h.Corrupt})
	}
	return rep, nil
}

func (s Server) Drop(ctx context.Context, req *apiv1.DropRequest) (*apiv1.Empty, error) {
	if s.Holder == nil {
		return nil, ToRPC(noStore)
	}
	return &apiv1.Empty{}, ToRPC(s.Holder.Drop(ctx, req.Checkpoint))
}

func (s Server) KeepManifest(ctx context.Context, req *apiv1.KeepManifestRequest) (*apiv1.Empty, error) {
	if s.Holder == nil {
		return nil, ToRPC(noStore)
	}
	return &apiv1.Empty{}, ToRPC(s.Holder.KeepManifest(ctx, req.Checkpoint, req.Manifest))
}

func (s Server) Manifests(ctx context.Context, _ *apiv1.Empty) (*apiv1.ManifestsReply, error) {
	if s.Holder == nil {
		return nil, ToRPC(noStore)
	}
	kept, err := s.Holder.Manifests(ctx)
	if err != nil {
		return nil, ToRPC(err)
	}
	rep := &apiv1.ManifestsReply{}
	for h, m := range kept {
		rep.Manifests = append(rep.Manifests, &apiv1.KeptManifest{Checkpoint: h, Manifest: m})
	}
	return rep, nil
}

// Exits serves the exits of the Agent's job-nodes, when it tells of them
// (ExitNotifier).
func (s Server) Exits(_ *apiv1.Empty, st apiv1.Shim_ExitsServer) error {
	if s.Exiting == nil {
		return status.Error(codes.Unimplemented, "this shim does not tell of exits: its job-nodes are polled")
	}
	err := s.Exiting.WatchExits(st.Context(), func() {
		_ = st.Send(&apiv1.NodeRef{}) // fails only once the call, and its context, ended
	}, func(r NodeRef) {
		_ = st.Send(RefToPB(r))
	})
	if st.Context().Err() != nil {
		return nil // the caller went
	}
	return ToRPC(err)
}

func (s Server) Output(ctx context.Context, req *apiv1.NodeOutputRequest) (*apiv1.NodeOutput, error) {
	if s.Outputs == nil {
		return nil, ToRPC(fmt.Errorf("%w: this shim does not serve output", ErrInvalid))
	}
	data, size, err := s.Outputs.ReadOutput(ctx, RefFromPB(req.Ref), req.Offset, req.Max)
	if err != nil {
		return nil, ToRPC(err)
	}
	return &apiv1.NodeOutput{Node: req.GetRef().GetNode(), Data: data, Size: size}, nil
}
