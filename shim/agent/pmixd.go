package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/pmix/hostmsg"
	"github.com/torpor-hpc/torpor/pmix/jobspec"
	"github.com/torpor-hpc/torpor/pmix/link"
)

// FenceFunc sends a fence contribution to the coordinator and returns the
// combined data.
type FenceFunc func(ctx context.Context, req agentapi.FenceRequest) ([]byte, error)

// pmixdSpec extracts a job-node's pmixd spec, if it has one.
func pmixdSpec(spec agentapi.NodeSpec) (*jobspec.JobSpec, error) {
	js, err := jobspec.FromEnv(spec.Env)
	if err != nil {
		return nil, fmt.Errorf("%w: job-node %s: %w", agentapi.ErrInvalid, spec.Name, err)
	}
	return js, nil
}

// linkPath is the job-node's link socket: the same path on every host, so a
// restored pmixd finds the shim of its new host where the old one was.
func (a *Agent) linkPath(job, n string) string {
	return filepath.Join(a.cfg.RunDir, "jobs", job, n+".link")
}

// preparePMIxd writes pmixd's spec and starts the job-node's link server. It
// returns the command that runs pmixd in the sandbox.
func (a *Agent) preparePMIxd(n *node, js *jobspec.JobSpec) ([]string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the torpor binary for pmixd: %w", err)
	}
	js.Link = a.linkPath(n.job, n.spec.Name)
	js.TmpDir = filepath.Join(a.cfg.RunDir, "jobs", n.job, n.spec.Name+".pmix")
	if err := ownedDir(js.TmpDir, userOf(n.spec)); err != nil {
		return nil, err
	}
	// Open MPI's shared-memory segments go to a directory of this job-node's
	// own, at the same path on every host: by default they are POSIX shm
	// objects named /dev/shm/open_mpi.NNNN, numbered machine-wide, so two
	// job-nodes' (unlinked, hence CRIU "ghost") segments can have the same name
	// and collide when they are restored side by side on one machine.
	shm := filepath.Join(a.cfg.RunDir, "jobs", n.job, n.spec.Name+".shm")
	if err := ownedDir(shm, userOf(n.spec)); err != nil {
		return nil, err
	}
	js.ExtraEnv = append([]string{
		"OMPI_MCA_shmem=mmap",
		"OMPI_MCA_shmem_mmap_backing_file_base_dir=" + shm,
		"OMPI_MCA_btl_vader_backing_directory=" + shm,
	}, js.ExtraEnv...)
	data, err := json.Marshal(js)
	if err != nil {
		return nil, err
	}
	specFile := filepath.Join(a.cfg.RunDir, "jobs", n.job, n.spec.Name+".pmixd.json")
	// The owner's alone: it holds the job's environment.
	if err := writeOwned(specFile, data, userOf(n.spec)); err != nil {
		return nil, err
	}
	if err := a.listenLink(n); err != nil {
		return nil, err
	}
	if err := js.Validate(); err != nil {
		return nil, fmt.Errorf("%w: job-node %s: %w", agentapi.ErrInvalid, n.spec.Name, err)
	}
	if js.Loader != "" {
		// The program's own loader (Open MPI 5 of `make deps`, say) must
		// be at the same path on every host of the job.
		if _, err := os.Stat(js.Loader); err != nil {
			return nil, fmt.Errorf("%w: job-node %s: the program's dynamic loader, which pmixd runs under, is not on this host: %w (install the same MPI here: `make deps` for Open MPI 5)", agentapi.ErrInvalid, n.spec.Name, err)
		}
	}
	return js.PMIxdArgv(self, "--spec", specFile, "--log-level", "warn"), nil
}

// listenLink starts n's link server. A stale socket (of a shim that died)
// is replaced: pmixd's link client re-dials until it answers again.
func (a *Agent) listenLink(n *node) error {
	n.linkPath = a.linkPath(n.job, n.spec.Name)
	n.link = link.NewServer(forwarder{a: a, job: n.job}, a.log.With("job", n.job, "node", n.spec.Name))
	if u := userOf(n.spec); !u.Root() {
		n.link.SetOwner(u.UID, u.GID)
	}
	if err := n.link.Listen(n.linkPath); err != nil {
		n.link.Close()
		n.link = nil
		return err
	}
	return nil
}

// forwarder sends pmixd's requests on to the coordinator.
type forwarder struct {
	a   *Agent
	job string
}

func (f forwarder) Fence(ctx context.Context, req hostmsg.FenceRequest) ([]byte, error) {
	if f.a.cfg.Fence == nil {
		return nil, errors.New("this shim cannot reach a coordinator for fences")
	}
	return f.a.cfg.Fence(ctx, agentapi.FenceRequest{Job: req.Job, Node: req.Node, Nodes: req.Nodes,
		Signature: req.Signature, Seq: req.Seq, Data: req.Data})
}

func (f forwarder) DirectModex(context.Context, hostmsg.ModexRequest) ([]byte, error) {
	return nil, errors.New("direct modex is not supported across job-nodes yet: run with the default full modex (OMPI_MCA_pmix_base_async_modex=0)")
}

func (f forwarder) Failed(_ context.Context, fl hostmsg.Failure) error {
	f.a.log.Warn("pmixd is ending the job", "job", fl.Job, "node", fl.Node, "rank", fl.Rank, "code", fl.Code, "err", fl.Err)
	return nil
}

// preparePMIx raises the PMIx checkpoint event in the job-node's pmixd and
// waits for the ranks that asked to be told. pmixd then drops its link until
// the job-node is thawed or restored.
func (a *Agent) preparePMIx(ctx context.Context, n *node, ckpt string) error {
	wait := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl) - 500*time.Millisecond; left < wait {
			wait = max(left, time.Millisecond) // 0 would mean pmixd's default
		}
	}
	res, err := n.link.Prepare(ctx, ckpt, wait)
	if err != nil {
		return err
	}
	if len(res.Laggards) > 0 {
		a.log.Warn("ranks did not answer the checkpoint event in time; checkpointing anyway", "job", n.job, "node", n.spec.Name, "ckpt", ckpt, "ranks", res.Laggards)
	}
	a.log.Info("pmixd prepared", "job", n.job, "node", n.spec.Name, "ckpt", ckpt, "registered", res.Registered, "completed", res.Completed)
	return nil
}
