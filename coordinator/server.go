package coordinator

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/internal/pki"
)

// CheckpointInfo describes one committed checkpoint for listings.
type CheckpointInfo struct {
	Handle  string
	Job     string
	Kind    string
	Created time.Time
	Bytes   int64
	Nodes   int
	Phases  map[string]time.Duration
	// HostLocal: the images are in the shims' checkpoint stores.
	HostLocal bool
}

// Describer is implemented by stores that can list committed checkpoints with details.
type Describer interface {
	Describe(job string) ([]CheckpointInfo, error) // "" = every job, oldest first
}

// Server serves the Coordinator gRPC service. User commands are accepted on
// the unix socket only (PeerCredentials); Register only over mutual TLS.
type Server struct {
	apiv1.UnimplementedCoordinatorServer
	C *Coordinator
	// DialShim connects to a shim that registered; it returns the client to use.
	DialShim func(ctx context.Context, address string) (apiv1.ShimClient, error)
	// Stopping, closed when the coordinator stops, ends Waits in progress
	// (as unavailable: the caller waits again on the next coordinator).
	Stopping <-chan struct{}
	// Allocations, if set, restrict where a user's job-nodes may run: only
	// on the nodes of the user's running Slurm job (checkHosts).
	Allocations Allocations

	allocs      sync.Map // job -> placedIn: the Slurm job it was placed in
	shimAddrs   sync.Map // host -> address it last registered with
	shimRunDirs sync.Map // host -> the run directory it registered with
	shimSeen    sync.Map // host -> time.Time of its last registration
}

// shimReachableWithin is how recent a shim's last registration (every 5 s)
// must be for torpor_shims_reachable to count it.
const shimReachableWithin = 15 * time.Second

// ShimCounts returns how many hosts have a registered shim, and how many of
// those registered within shimReachableWithin. A shim that never registers
// (the embedded one, in this process) is always reachable.
func (s *Server) ShimCounts() (registered, reachable int) {
	for _, h := range s.C.Hosts() {
		registered++
		v, ok := s.shimSeen.Load(h)
		if !ok || time.Since(v.(time.Time)) < shimReachableWithin {
			reachable++
		}
	}
	return registered, reachable
}

func (s *Server) authorize(ctx context.Context, job string) (int, error) {
	uid, err := callerUID(ctx)
	if err != nil {
		return 0, err
	}
	if job == "" {
		return uid, nil
	}
	return uid, s.C.Authorize(job, uid)
}

// checkDirs refuses directories a client named that are not the daemons':
// a daemon never takes a path from a client (torpor run --checkpoint-dir
// and --run-dir with daemons running).
func (s *Server) checkDirs(req *apiv1.RunRequest, spec JobSpec) error {
	if d := req.CheckpointDir; d != "" {
		have := s.C.CheckpointDir()
		if have == "" || filepath.Clean(d) != have {
			return fmt.Errorf("%w: --checkpoint-dir %s: this coordinator keeps every checkpoint in %s (its own --checkpoint-dir); drop the flag, or ask the administrator", agentapi.ErrInvalid, d, have)
		}
	}
	if d := req.RunDir; d != "" {
		for _, n := range spec.Nodes {
			v, ok := s.shimRunDirs.Load(n.Host)
			if ok && filepath.Clean(d) != v.(string) {
				return fmt.Errorf("%w: --run-dir %s: the shim of %s uses %s (its own --run-dir); drop the flag or give that one", agentapi.ErrInvalid, d, n.Host, v)
			}
		}
	}
	return nil
}

// shimAwayAfter is how long a shim that registers every 5 s must have
// been silent to count as back from an absence when it registers again
// (at the same address: a host that rebooted).
const shimAwayAfter = 30 * time.Second

// Register adds (or replaces) the shim of a host.
func (s *Server) Register(ctx context.Context, req *apiv1.RegisterRequest) (*apiv1.Empty, error) {
	if err := shimCaller(ctx); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	if req.Host == "" || req.Address == "" {
		return nil, agentapi.ToRPC(fmt.Errorf("%w: register needs a host name and an address", agentapi.ErrInvalid))
	}
	if hosts := callerHosts(ctx); len(hosts) > 0 && !slices.Contains(hosts, req.Host) {
		// A certificate issued for one host (IssueHostShim) registers
		// only that host: root on a compute node cannot take another's.
		return nil, agentapi.ToRPC(fmt.Errorf("%w: this shim's certificate is for host %s, it cannot register as %s (start the shim with --host %s, or give it the certificate of %s: torpor coordinator --init-pki --pki-shim-hosts %s)",
			agentapi.ErrPermission, strings.Join(hosts, ", "), req.Host, hosts[0], req.Host, req.Host))
	}
	if s.DialShim == nil {
		return nil, agentapi.ToRPC(errors.New("this coordinator cannot dial shims"))
	}
	cl, err := s.DialShim(ctx, req.Address)
	if err != nil {
		return nil, agentapi.ToRPC(fmt.Errorf("dial shim %s at %s: %w", req.Host, req.Address, err))
	}
	s.C.AddAgent(req.Host, agentapi.Client{Shim: cl, Verifies: req.VerifiesImages, PostCopies: req.PostCopy,
		Streams: req.StreamsImages, Addr: req.Address})
	lastSeen, seenBefore := s.shimSeen.Swap(req.Host, time.Now())
	away := seenBefore && time.Since(lastSeen.(time.Time)) > shimAwayAfter
	s.C.Seen(req.Host)
	if len(req.Nodes) > 0 {
		held := make([]agentapi.NodeRef, 0, len(req.Nodes))
		for _, r := range req.Nodes {
			held = append(held, agentapi.RefFromPB(r))
		}
		s.C.DestroyStrays(req.Host, held)
	}
	if req.RunDir != "" {
		s.shimRunDirs.Store(req.Host, filepath.Clean(req.RunDir))
	}
	// Shims register again every few seconds; only news is logged: a new
	// shim, a new address, or a shim back after an absence.
	if prev, ok := s.shimAddrs.Swap(req.Host, req.Address); !ok || prev != req.Address || away {
		s.C.log.Info("shim registered", "host", req.Host, "address", req.Address)
		s.C.shimRegistered(req.Host)
	}
	return &apiv1.Empty{}, nil
}

// Run starts a job owned by the caller.
func (s *Server) Run(ctx context.Context, req *apiv1.RunRequest) (*apiv1.Job, error) {
	uid, err := s.authorize(ctx, "")
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	spec := SpecFromPB(req.Spec)
	if uid != 0 || spec.Owner == 0 {
		spec.Owner = uid
	}
	if err := s.checkDirs(req, spec); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	if err := s.checkHosts(ctx, uid, specHosts(spec.Nodes)); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	if err := s.C.Start(ctx, spec); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	s.placed(ctx, uid, spec.ID)
	j, err := s.C.Job(spec.ID)
	return JobToPB(j), agentapi.ToRPC(err)
}

func (s *Server) Checkpoint(ctx context.Context, req *apiv1.CheckpointRequest) (*apiv1.CheckpointReply, error) {
	if _, err := s.authorize(ctx, req.Job); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	res, err := s.C.CheckpointDetails(ctx, req.Job, CheckpointOptions{Stop: req.Stop, Compress: req.Compress})
	rep := &apiv1.CheckpointReply{Handle: res.Handle, Kind: res.Kind, Bytes: res.Bytes, PhaseNanos: phaseNanos(res.Phases)}
	return rep, agentapi.ToRPC(err)
}

func (s *Server) Restart(ctx context.Context, req *apiv1.RestartRequest) (*apiv1.RestartReply, error) {
	job, _, _ := strings.Cut(req.Ref, "/")
	uid, err := callerUID(ctx)
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	if _, err := s.C.Job(job); err == nil {
		if err := s.C.Authorize(job, uid); err != nil {
			return nil, agentapi.ToRPC(err)
		}
	} else if uid != 0 {
		return nil, agentapi.ToRPC(fmt.Errorf("%w: job %s is not registered with this coordinator; only root may adopt it from its checkpoint", agentapi.ErrPermission, job))
	}
	res, err := s.C.Restart(ctx, req.Ref, RestartOptions{Hosts: req.Hosts, Fallback: req.Fallback,
		Allowed: func(hosts []string) error { return s.checkHosts(ctx, uid, hosts) }})
	if err == nil {
		s.placed(ctx, uid, res.Job)
	}
	return &apiv1.RestartReply{Job: res.Job, Checkpoint: res.Checkpoint, Skipped: res.Skipped, Moved: res.Moved, Bytes: res.Bytes, SetAside: res.SetAside}, agentapi.ToRPC(err)
}

func (s *Server) Migrate(ctx context.Context, req *apiv1.MigrateRequest) (*apiv1.MigrateReply, error) {
	uid, err := s.authorize(ctx, req.Job)
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	if err := s.checkHosts(ctx, uid, []string{req.To}); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	res, err := s.C.MigrateDetails(ctx, req.Job, req.Node, req.To, MigrateOptions{PostCopy: PostCopy(req.Postcopy)})
	return &apiv1.MigrateReply{Mode: res.Mode, ModeReason: res.ModeReason, DowntimeNanos: int64(res.Downtime), LastPageNanos: int64(res.LastPage), Streamed: res.Streamed,
		Bytes: res.Bytes, MemoryBytes: res.Memory, PhasesNanos: phaseNanos(res.Phases)}, agentapi.ToRPC(err)
}

// Jobs lists the caller's jobs (root: every job).
func (s *Server) Jobs(ctx context.Context, _ *apiv1.Empty) (*apiv1.JobList, error) {
	uid, err := callerUID(ctx)
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	out := &apiv1.JobList{}
	for _, j := range s.C.Jobs() {
		if uid == 0 || j.Spec.Owner == uid {
			out.Jobs = append(out.Jobs, JobToPB(j))
		}
	}
	return out, nil
}

func (s *Server) GetJob(ctx context.Context, req *apiv1.JobRef) (*apiv1.Job, error) {
	if _, err := s.authorize(ctx, req.Job); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	j, err := s.C.Job(req.Job)
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	return JobToPB(j), nil
}

// Output reads the job-nodes' output from the offsets asked for, each from
// the shim of the host it runs on now.
func (s *Server) Output(ctx context.Context, req *apiv1.OutputRequest) (*apiv1.OutputReply, error) {
	if _, err := s.authorize(ctx, req.Job); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	out, err := s.C.Output(ctx, req.Job, req.Offsets)
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	rep := &apiv1.OutputReply{}
	for _, o := range out {
		rep.Nodes = append(rep.Nodes, &apiv1.NodeOutput{Node: o.Node, Data: o.Data, Size: o.Size})
	}
	return rep, nil
}

// Wait returns when the job is finished, failed or suspended.
func (s *Server) Wait(ctx context.Context, req *apiv1.JobRef) (*apiv1.Job, error) {
	if _, err := s.authorize(ctx, req.Job); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	for {
		// Taken before the job is read: a change after the read closes it.
		changed := s.C.Changed()
		j, err := s.C.Job(req.Job)
		if err != nil {
			return nil, agentapi.ToRPC(err)
		}
		switch j.State {
		case StateFinished, StateFailed, StateSuspended:
			return JobToPB(j), nil
		}
		select {
		case <-ctx.Done():
			return nil, agentapi.ToRPC(ctx.Err())
		case <-s.Stopping:
			return nil, status.Error(codes.Unavailable, "the coordinator is stopping; wait again")
		case <-changed:
		}
	}
}

func (s *Server) ListCheckpoints(ctx context.Context, req *apiv1.ListCheckpointsRequest) (*apiv1.CheckpointList, error) {
	uid, err := callerUID(ctx)
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	if req.Job != "" && uid != 0 {
		if err := s.C.Authorize(req.Job, uid); err != nil {
			return nil, agentapi.ToRPC(err)
		}
	}
	d, ok := s.C.store.(Describer)
	if !ok {
		return nil, agentapi.ToRPC(errors.New("this checkpoint store cannot list checkpoints"))
	}
	infos, err := d.Describe(req.Job)
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	out := &apiv1.CheckpointList{}
	// job -> what the shims hold (with verify: the good copies, and those
	// found corrupt), asked once per job
	held, aside := map[string]map[string]copies{}, map[string]map[string][]setAsideCopy{}
	for _, in := range infos {
		// A user sees the checkpoints of their own jobs; those of a job
		// the coordinator no longer knows only root does.
		if uid != 0 && s.C.Authorize(in.Job, uid) != nil {
			continue
		}
		cp := &apiv1.Checkpoint{
			Handle: in.Handle, Job: in.Job, Kind: in.Kind, CreatedUnix: in.Created.Unix(),
			Bytes: in.Bytes, Nodes: int32(in.Nodes), Verified: "not checked", PhaseNanos: map[string]int64{},
		}
		for p, d := range in.Phases {
			cp.PhaseNanos[p] = int64(d)
		}
		var man Manifest
		if in.HostLocal {
			if held[in.Job] == nil {
				held[in.Job], aside[in.Job] = s.C.askHeld(ctx, in.Job, req.Verify)
			}
			var err error
			if man, err = s.C.store.Load(in.Handle); err == nil {
				cp.HostLocal, cp.Copies = true, int32(held[in.Job][in.Handle].fewest(man))
			}
			for _, a := range aside[in.Job][in.Handle] {
				cp.SetAside = append(cp.SetAside, a.node+" on "+a.host)
			}
		}
		if req.Verify {
			// The store checks the job manifest (and a shared
			// checkpoint's images); the shims checked their copies.
			err := s.C.store.Verify(ctx, in.Handle)
			if err == nil && in.HostLocal {
				err = lostNodes(man, held[in.Job][in.Handle])
			}
			if err != nil {
				cp.Verified = err.Error()
			} else {
				cp.Verified = "ok"
			}
		}
		out.Checkpoints = append(out.Checkpoints, cp)
	}
	return out, nil
}

// SpecFromPB converts a wire job spec.
func SpecFromPB(p *apiv1.JobSpec) JobSpec {
	if p == nil {
		return JobSpec{}
	}
	s := JobSpec{ID: p.Id, Owner: int(p.Owner), Compress: p.Compress}
	for _, n := range p.Nodes {
		s.Nodes = append(s.Nodes, agentapi.NodeFromPB(n))
	}
	return s
}

// SpecToPB converts a job spec for the wire.
func SpecToPB(s JobSpec) *apiv1.JobSpec {
	p := &apiv1.JobSpec{Id: s.ID, Owner: int32(s.Owner), Compress: s.Compress}
	for _, n := range s.Nodes {
		p.Nodes = append(p.Nodes, agentapi.NodeToPB(n))
	}
	return p
}

// JobToPB converts a job record for the wire.
func JobToPB(j Job) *apiv1.Job {
	return &apiv1.Job{
		Spec: SpecToPB(j.Spec), State: string(j.State), Reason: j.Reason,
		CreatedUnix: j.Created.Unix(), UpdatedUnix: j.Updated.Unix(),
		LastCheckpoint: j.LastCheckpoint, ExitCode: int32(j.ExitCode),
	}
}

// Fence takes a job-node's fence contribution from its shim (mutual TLS, or
// root on the unix socket) and answers when the fence is complete.
func (s *Server) Fence(ctx context.Context, req *apiv1.FenceRequest) (*apiv1.FenceReply, error) {
	if err := shimCaller(ctx); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	nodes := make([]int, len(req.Nodes))
	for i, n := range req.Nodes {
		nodes[i] = int(n)
	}
	// A fence waits for every job-node; a coordinator that stops ends the
	// wait at once (pmixd asks the next one), not after Close's grace.
	ctx, cancel := s.untilStopping(ctx)
	defer cancel()
	data, err := s.C.Fence(ctx, agentapi.FenceRequest{Job: req.Job, Node: int(req.Node), Nodes: nodes, Signature: req.Signature, Seq: req.Seq, Data: req.Data})
	if err != nil {
		return nil, agentapi.ToRPC(err)
	}
	return &apiv1.FenceReply{Data: data}, nil
}

// untilStopping is ctx, also ended when the coordinator stops: for calls
// that wait on others (fences, followed events), which would otherwise hold
// Close for its whole grace.
func (s *Server) untilStopping(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	if s.Stopping != nil {
		go func() {
			select {
			case <-s.Stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	return ctx, cancel
}

// callerHosts are the hosts the caller's TLS certificate is for
// (pki.PeerHosts): none for the cluster's shared shim certificate, or a
// caller on the unix socket.
func callerHosts(ctx context.Context) []string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return pki.PeerHosts(ti.State)
}

// shimCaller accepts calls from shims: over mutual TLS, or from root on the
// unix socket.
func shimCaller(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return fmt.Errorf("%w: no peer", agentapi.ErrPermission)
	}
	if _, isTLS := p.AuthInfo.(credentials.TLSInfo); isTLS {
		return nil
	}
	if pc, ok := p.AuthInfo.(PeerCred); ok && pc.UID == 0 {
		return nil
	}
	return fmt.Errorf("%w: only shims may call this (mutual TLS, or root on the unix socket)", agentapi.ErrPermission)
}

// Cancel ends a job (root or its owner).
func (s *Server) Cancel(ctx context.Context, req *apiv1.JobRef) (*apiv1.Job, error) {
	if _, err := s.authorize(ctx, req.Job); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	if err := s.C.Cancel(ctx, req.Job); err != nil {
		return nil, agentapi.ToRPC(err)
	}
	j, err := s.C.Job(req.Job)
	return JobToPB(j), agentapi.ToRPC(err)
}

// Events sends the history of the caller's jobs (root: every job), then,
// with follow, every new event until the call ends or the coordinator stops.
func (s *Server) Events(req *apiv1.EventsRequest, stream apiv1.Coordinator_EventsServer) error {
	ctx := stream.Context()
	uid, err := callerUID(ctx)
	if err != nil {
		return agentapi.ToRPC(err)
	}
	if req.Job != "" && uid != 0 {
		// A job the coordinator no longer knows may still have a history:
		// only its owner's events are sent, whatever the answer.
		if err := s.C.Authorize(req.Job, uid); err != nil && !errors.Is(err, agentapi.ErrNotFound) {
			return agentapi.ToRPC(err)
		}
	}
	f := EventFilter{Job: req.Job, UID: uid, Progress: req.Progress && req.Follow}
	hist, after := s.C.History(f)
	if req.Follow && req.NoHistory {
		hist = []Event{{Seq: after, Time: s.C.now(), Job: req.Job, Type: "follow"}}
	}
	for _, e := range hist {
		if err := stream.Send(EventToPB(e)); err != nil {
			return err
		}
	}
	if !req.Follow {
		return nil
	}
	ctx, cancel := s.untilStopping(ctx)
	defer cancel()
	err = s.C.Follow(ctx, after, f, func(e Event) error { return stream.Send(EventToPB(e)) })
	if stream.Context().Err() == nil && ctx.Err() != nil {
		return status.Error(codes.Unavailable, "the coordinator is stopping; follow again")
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// EventToPB converts an event for the wire.
func EventToPB(e Event) *apiv1.Event {
	return &apiv1.Event{
		Seq: e.Seq, TimeUnixNano: e.Time.UnixNano(), Job: e.Job, Owner: int32(e.Owner), Type: e.Type,
		From: string(e.From), To: string(e.To), Reason: e.Reason, Handle: e.Handle, Bytes: e.Bytes,
		PhaseNanos: e.Phases, Node: e.Node, FromHost: e.FromHost, ToHost: e.ToHost, Error: e.Error,
		FailedPhase: e.FailedPhase, Operation: e.Operation, Phase: e.Phase, Done: e.Done, ElapsedNanos: e.ElapsedNS,
		Mode: e.Mode, DowntimeNanos: e.DowntimeNS, LastPageNanos: e.LastPageNS,
	}
}

func phaseNanos(d map[Phase]time.Duration) map[string]int64 {
	if d == nil {
		return nil
	}
	out := make(map[string]int64, len(d))
	for p, v := range d {
		out[string(p)] = int64(v)
	}
	return out
}
