package harness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/shim/agent"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// Env is one benchmark's simulated cluster: hosts h1..hN, one real shim
// Agent per host (wrapped by a Recorder), a coordinator and an on-disk
// checkpoint catalog under Dir. Close removes all of it.
type Env struct {
	Name     string
	Dir      string
	Cluster  *simhost.Cluster
	Agents   map[string]*agent.Agent
	Rec      *Recorder
	Coord    *coordinator.Coordinator
	Store    *catalog.Store
	CRIU     criu.Binary
	Drv      *criu.Driver // for raw CRIU comparisons
	Bins     Bins
	Log      *slog.Logger
	CgParent string
	seq      int
}

// EnvConfig says how big a cluster to build.
type EnvConfig struct {
	Name  string // short, unique on the machine
	Hosts int
	Dir   string // scratch directory: images, status files, job output
	Bins  Bins
	CRIU  criu.Binary
	Log   *slog.Logger
	// NoAppFiles are the hosts whose agent captures no application files at
	// a dump (agent.Config.NoAppFiles; B6 compares them with the others).
	NoAppFiles []string
}

// NewEnv builds a cluster. On error nothing is left behind.
func NewEnv(ctx context.Context, cfg EnvConfig) (_ *Env, err error) {
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create bench directory: %w", err)
	}
	cl, err := simhost.NewCluster(ctx, cfg.Name, cfg.Hosts)
	if err != nil {
		return nil, err
	}
	e := &Env{Name: cfg.Name, Dir: cfg.Dir, Cluster: cl, Agents: map[string]*agent.Agent{}, Rec: &Recorder{},
		CRIU: cfg.CRIU, Bins: cfg.Bins, Log: cfg.Log, CgParent: "/torpor-bench-" + cfg.Name}
	defer func() {
		if err != nil {
			_ = e.Close()
		}
	}()
	e.Drv = criu.NewDriver(cfg.CRIU, cfg.Log)
	wrapped := map[string]agentapi.Agent{}
	for i := 1; i <= cfg.Hosts; i++ {
		h := cl.Host(i)
		name := fmt.Sprintf("h%d", i)
		a, err := agent.New(agent.Config{Host: name, HostNetNS: h.NetNS, Bridge: h.Bridge, CgroupParent: e.CgParent,
			RunDir: filepath.Join(cfg.Dir, "run"), CRIU: cfg.CRIU, Log: cfg.Log, NoAppFiles: slices.Contains(cfg.NoAppFiles, name)})
		if err != nil {
			return nil, err
		}
		e.Agents[name] = a
		wrapped[name] = e.Rec.Wrap(name, a)
	}
	key, err := catalog.LoadOrCreateKey(filepath.Join(cfg.Dir, "state", "catalog.key"))
	if err != nil {
		return nil, err
	}
	if e.Store, err = catalog.Open(filepath.Join(cfg.Dir, "ckpt"), key); err != nil {
		return nil, err
	}
	// Keep 1: the benchmark takes many checkpoints of a job and needs only the newest.
	e.Coord, err = coordinator.New(coordinator.Options{StateDir: filepath.Join(cfg.Dir, "state"),
		Store: coordinator.CatalogStore{S: e.Store}, Agents: wrapped, Log: cfg.Log, Keep: 1})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// CkptDir is where the catalog keeps images: the storage being measured.
func (e *Env) CkptDir() string { return filepath.Join(e.Dir, "ckpt") }

// Close destroys every job-node on every host, removes the cluster's
// namespaces and the scratch directory.
func (e *Env) Close() error {
	ctx := context.Background()
	var errs []error
	for _, a := range e.Agents {
		errs = append(errs, a.Close(ctx))
	}
	if e.Cluster != nil {
		errs = append(errs, e.Cluster.Close())
	}
	if mount, err := cgroup.Mountpoint(); err == nil {
		// Empty leftovers of the agents' cgroup tree (removed bottom-up).
		removeEmptyTree(filepath.Join(mount, e.CgParent))
		if e.Cluster != nil {
			if err := simhost.LeakCheck(e.Cluster, filepath.Join(mount, e.CgParent), ""); err != nil {
				errs = append(errs, fmt.Errorf("cluster %s left something behind: %w", e.Name, err))
			}
		}
	}
	errs = append(errs, os.RemoveAll(e.Dir))
	return errors.Join(errs...)
}

// removeEmptyTree removes empty cgroup directories below and at dir.
func removeEmptyTree(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, en := range ents {
		if en.IsDir() {
			removeEmptyTree(filepath.Join(dir, en.Name()))
		}
	}
	_ = os.Remove(dir)
}
