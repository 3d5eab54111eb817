package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/internal/pki"
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
	// Streamed, in a routed Env, makes migrations stream their images
	// from shim to shim (agentapi.ImageStreamer); else they go through the
	// checkpoint directory.
	Streamed atomic.Bool
	stop     []func()
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
	// Routed builds hosts that share no L2 segment (simhost's routed
	// cluster) joined by the shims' VXLAN overlay, each shim with an image
	// directory of its own and a Shim service serving its images over
	// mutual TLS (B8).
	Routed bool
	// LocalCheckpoints (Routed only) keeps checkpoints in the shims'
	// stores with one replica each, copied at ReplicaRate bytes/s (B9).
	LocalCheckpoints bool
	ReplicaRate      int64
}

// NewEnv builds a cluster. On error nothing is left behind.
func NewEnv(ctx context.Context, cfg EnvConfig) (_ *Env, err error) {
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create bench directory: %w", err)
	}
	create := simhost.NewCluster
	if cfg.Routed {
		create = simhost.NewRoutedCluster
	}
	cl, err := create(ctx, cfg.Name, cfg.Hosts)
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
	e.Drv.Prepare(ctx) // CRIU's kernel cache, as every shim's driver makes it
	var serverTLS, clientTLS *tls.Config
	var peers []net.IP
	if cfg.Routed {
		if serverTLS, clientTLS, err = benchTLS(filepath.Join(cfg.Dir, "pki")); err != nil {
			return nil, err
		}
		for _, u := range cl.Underlay() {
			peers = append(peers, net.ParseIP(u))
		}
	}
	wrapped := map[string]agentapi.Agent{}
	for i := 1; i <= cfg.Hosts; i++ {
		h := cl.Host(i)
		name := fmt.Sprintf("h%d", i)
		ac := agent.Config{Host: name, HostNetNS: h.NetNS, Bridge: h.Bridge, CgroupParent: e.CgParent,
			RunDir: filepath.Join(cfg.Dir, "run"), CRIU: cfg.CRIU, Log: cfg.Log, NoAppFiles: slices.Contains(cfg.NoAppFiles, name)}
		if cfg.Routed {
			ac.ImageDir, ac.PeerTLS = filepath.Join(cfg.Dir, "images", name), clientTLS
		}
		a, err := agent.New(ac)
		if err != nil {
			return nil, err
		}
		e.Agents[name] = a
		if !cfg.Routed {
			wrapped[name] = e.Rec.Wrap(name, a)
			continue
		}
		if err := a.SetupBridge(peers, 0); err != nil {
			return nil, err
		}
		addr, err := e.serveImages(a, serverTLS)
		if err != nil {
			return nil, err
		}
		wrapped[name] = e.Rec.WrapStreaming(name, a, func() string {
			if e.Streamed.Load() {
				return addr
			}
			return ""
		})
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
		Store: coordinator.CatalogStore{S: e.Store}, Agents: wrapped, Log: cfg.Log, Keep: 1,
		LocalCheckpoints: cfg.LocalCheckpoints, ReplicaRate: cfg.ReplicaRate})
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
	if e.Coord != nil {
		// Replicas still being copied write into the shims' stores.
		e.Coord.WaitBackground()
	}
	for _, stop := range e.stop {
		stop()
	}
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

// serveImages serves a's images to the other shims over mutual TLS (the
// Shim service's Images, as `torpor shim` does) and returns the address.
func (e *Env) serveImages(a *agent.Agent, serverTLS *tls.Config) (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	gs := agentapi.NewShimServer(serverTLS, agentapi.Server{Agent: a, ImageServer: a, Holder: a, Exiting: a})
	go func() { _ = gs.Serve(lis) }()
	e.stop = append(e.stop, gs.Stop)
	return lis.Addr().String(), nil
}

// benchTLS makes a CA and a shim certificate in dir, as `torpor coordinator
// --init-pki` does, and returns the shims' server and client configurations.
func benchTLS(dir string) (server, client *tls.Config, err error) {
	ca, err := pki.EnsureCA(dir)
	if err != nil {
		return nil, nil, err
	}
	if err := ca.Issue(dir, "shim", pki.RoleBoth, []string{"127.0.0.1"}); err != nil {
		return nil, nil, err
	}
	return pki.Configs(dir, "shim", "127.0.0.1")
}
