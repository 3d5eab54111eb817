// Package embedded runs a whole torpor installation inside one process on
// one machine: a coordinator, one shim, and a one-host simulated network
// (a network namespace with a bridge) for the job-node sandboxes. It is what
// `torpor run` uses when no coordinator is running, so that one command
// works on a laptop with no set-up.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/shim/agent"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// Host is the name of the embedded shim's host.
const Host = "localhost"

// Config configures the embedded stack.
type Config struct {
	StateDir      string
	CheckpointDir string
	Socket        string // the CLI socket, so other `torpor` commands reach this run
	RunDir        string
	CgroupParent  string
	CRIU          criu.Binary
	Log           *slog.Logger
}

// Stack is a running embedded installation.
type Stack struct {
	Daemon  *coordinator.Daemon
	Agent   *agent.Agent
	cluster *simhost.Cluster
}

// Start brings the stack up. Close takes everything down again.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	s := &Stack{}
	defer func() {
		if err != nil {
			s.Close(ctx)
		}
	}()
	s.cluster, err = simhost.NewCluster(ctx, fmt.Sprintf("e%d", os.Getpid()), 1)
	if err != nil {
		return nil, err
	}
	h := s.cluster.Host(1)
	fence := func(ctx context.Context, req agentapi.FenceRequest) ([]byte, error) {
		return s.Daemon.C.Fence(ctx, req)
	}
	s.Agent, err = agent.New(agent.Config{Host: Host, HostNetNS: h.NetNS, Bridge: h.Bridge,
		CgroupParent: cfg.CgroupParent, RunDir: cfg.RunDir, CRIU: cfg.CRIU, Log: cfg.Log, Fence: fence})
	if err != nil {
		return nil, err
	}
	s.Daemon, err = coordinator.StartDaemon(ctx, coordinator.DaemonConfig{
		StateDir: cfg.StateDir, CheckpointDir: cfg.CheckpointDir, Socket: cfg.Socket,
		Agents: map[string]agentapi.Agent{Host: s.Agent}, Log: cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Close destroys every job-node, stops the coordinator and removes the network.
func (s *Stack) Close(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if s.Agent != nil {
		_ = s.Agent.Close(ctx)
	}
	if s.Daemon != nil {
		s.Daemon.Close()
	}
	if s.cluster != nil {
		_ = s.cluster.Close()
	}
}
