// Package embedded runs a whole torpor installation inside one process on
// one machine: a coordinator, one shim, and a one-host simulated network
// (a network namespace with a bridge) for the job-node sandboxes. It is what
// the CLI uses when no coordinator is running, so that one command works on
// a laptop with no set-up.
//
// The job-nodes do not belong to the process that hosts the stack: when it
// ends (its job done, interrupted, or killed) while job-nodes still run,
// they run on, and the next process that starts a stack with the same state
// directory takes them over (Adopt), with the registry and the catalog.
// One process at a time hosts the stack of a state directory: Start holds a
// lock on it until Close, or until the process dies.
package embedded

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/internal/atomicfile"
	"github.com/torpor-hpc/torpor/internal/lockfile"
	"github.com/torpor-hpc/torpor/shim/agent"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// Host is the name of the embedded shim's host.
const Host = "localhost"

// DefaultRunDir is the run directory when neither the caller nor an earlier
// stack of the state directory chose one.
const DefaultRunDir = "/run/torpor"

// ErrBusy means another live process hosts the stack of this state
// directory: use its socket.
var ErrBusy = errors.New("another torpor process hosts the embedded coordinator of this state directory")

// ErrDaemonState means the state directory is a coordinator daemon's: no
// coordinator is embedded over it.
var ErrDaemonState = errors.New("no coordinator embedded")

// Config configures the embedded stack.
type Config struct {
	StateDir      string
	CheckpointDir string
	Socket        string // the CLI socket, so other `torpor` commands reach this one
	// RunDir is where job-node output and records are; "" takes the one the
	// stack of this state directory used last, else DefaultRunDir.
	RunDir       string
	CgroupParent string
	CRIU         criu.Binary
	Log          *slog.Logger
}

// Stack is a running embedded installation.
type Stack struct {
	Daemon *coordinator.Daemon
	Agent  *agent.Agent
	// Adopted is how many job-nodes an earlier process left running and
	// this stack took over.
	Adopted int
	// RunDir is the run directory in use.
	RunDir  string
	cluster *simhost.Cluster
	lock    *os.File
}

// settings is what a stack records in its state directory for the next one.
type settings struct {
	RunDir string `json:"run_dir"`
	Socket string `json:"socket"`
}

const (
	lockName     = "embedded.lock"
	settingsName = "embedded.json"
)

// ClusterName is the name of the simulated network of the stack of
// stateDir: the same for every process that hosts it, so that job-nodes
// left running keep their network; distinct per state directory.
func ClusterName(stateDir string) string {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		abs = stateDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "e" + hex.EncodeToString(sum[:4])
}

// Start brings the stack up, taking over what an earlier host process left
// running. It returns ErrBusy if a live process hosts it. Close takes it
// down again.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if cfg.StateDir == "" {
		return nil, errors.New("embedded coordinator: no state directory")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	if addr, err := os.ReadFile(filepath.Join(cfg.StateDir, coordinator.DaemonMarker)); err == nil {
		return nil, fmt.Errorf("%w: state directory %s belongs to a coordinator daemon (it listened for shims on %s), "+
			"which does not answer at %s: start it again (`torpor coordinator`); "+
			"if it is gone for good, remove %s to use this machine alone",
			ErrDaemonState, cfg.StateDir, strings.TrimSpace(string(addr)), cfg.Socket, filepath.Join(cfg.StateDir, coordinator.DaemonMarker))
	}
	lock, err := lockfile.TryLock(filepath.Join(cfg.StateDir, lockName))
	if errors.Is(err, lockfile.ErrHeld) {
		return nil, ErrBusy
	}
	if err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if coordinator.SocketAnswers(cfg.Socket) {
		// A coordinator (a daemon, or another state directory's) serves
		// the socket: use it, and take nothing over.
		lock.Close()
		return nil, fmt.Errorf("%w: a coordinator answers at %s", ErrBusy, cfg.Socket)
	}
	s := &Stack{lock: lock}
	defer func() {
		if err != nil {
			s.Close(ctx)
		}
	}()
	if s.RunDir, err = runDir(cfg.StateDir, cfg.RunDir); err != nil {
		return nil, err
	}
	data, _ := json.Marshal(settings{RunDir: s.RunDir, Socket: cfg.Socket})
	if err := atomicfile.Write(filepath.Join(cfg.StateDir, settingsName), data, 0o600); err != nil {
		return nil, err
	}
	name := ClusterName(cfg.StateDir)
	if s.cluster, err = simhost.OpenCluster(name, 1); err != nil {
		// None, or a broken one: start afresh. Job-nodes whose network
		// went with it are found gone by Adopt, which removes what is left.
		if err := simhost.Remove(name); err != nil {
			return nil, err
		}
		if s.cluster, err = simhost.NewCluster(ctx, name, 1); err != nil {
			return nil, err
		}
	}
	h := s.cluster.Host(1)
	fence := func(ctx context.Context, req agentapi.FenceRequest) ([]byte, error) {
		return s.Daemon.C.Fence(ctx, req)
	}
	s.Agent, err = agent.New(agent.Config{Host: Host, HostNetNS: h.NetNS, Bridge: h.Bridge,
		CgroupParent: cfg.CgroupParent, RunDir: s.RunDir, CRIU: cfg.CRIU, Log: cfg.Log, Fence: fence})
	if err != nil {
		return nil, err
	}
	n, err := s.Agent.Adopt(ctx)
	s.Adopted = n
	if err != nil {
		// The coordinator fails the jobs whose job-nodes were not adopted.
		cfg.Log.Error("some job-nodes left by an earlier torpor process could not be taken over", "adopted", n, "err", err)
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

// runDir is want, else the run directory the last stack of stateDir used,
// else DefaultRunDir. A different want is refused while job-nodes recorded
// under the last one may still run: they would be lost.
func runDir(stateDir, want string) (string, error) {
	last := lastSettings(stateDir)
	switch {
	case want == "" && last.RunDir != "":
		return last.RunDir, nil
	case want == "":
		return DefaultRunDir, nil
	case last.RunDir == "" || filepath.Clean(want) == filepath.Clean(last.RunDir):
		return want, nil
	}
	if ents, err := os.ReadDir(agent.RecordDir(last.RunDir, Host)); err == nil && len(ents) > 0 {
		return "", fmt.Errorf("job-nodes an earlier torpor process started with run directory %s may still run: "+
			"use --run-dir %s until they end (`torpor ps` shows them)", last.RunDir, last.RunDir)
	}
	return want, nil
}

func lastSettings(stateDir string) settings {
	var last settings
	if data, err := os.ReadFile(filepath.Join(stateDir, settingsName)); err == nil {
		_ = json.Unmarshal(data, &last)
	}
	return last
}

// Socket is the CLI socket of the stack that hosts (or last hosted) the
// state directory: where to go on ErrBusy.
func Socket(stateDir string) string { return lastSettings(stateDir).Socket }

// Close stops the coordinator once the calls in progress have their answer.
// Job-nodes that still run are left running, with their network, for the
// next stack to adopt; when none does, the network is removed as well.
// Close reports how many job-nodes it left running.
func (s *Stack) Close(ctx context.Context) (left int) {
	ctx = context.WithoutCancel(ctx)
	if s.Daemon != nil {
		s.Daemon.Close()
	}
	if s.Agent != nil {
		left = s.Agent.Nodes()
		if left > 0 {
			s.Agent.Release()
		} else {
			_ = s.Agent.Close(ctx)
		}
	}
	if s.cluster != nil {
		if left > 0 {
			s.cluster.Detach()
		} else {
			_ = s.cluster.Close()
		}
	}
	if s.lock != nil {
		s.lock.Close() // unlocks
	}
	return left
}
