package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/internal/atomicfile"
	"github.com/torpor-hpc/torpor/internal/lockfile"
	"github.com/torpor-hpc/torpor/internal/pki"
	"github.com/torpor-hpc/torpor/metrics"
)

// DaemonConfig configures a running coordinator: its state, its catalog and
// the sockets it serves.
type DaemonConfig struct {
	StateDir      string
	CheckpointDir string
	// Socket is the unix socket for the CLI (authorized by SO_PEERCRED).
	Socket string
	// Listen is the TCP address shims register on (mutual TLS); "" = none.
	Listen string
	// ServerTLS authenticates the coordinator to shims and requires their
	// certificates; ClientTLS is used to dial shims back. Both are required
	// with Listen.
	ServerTLS, ClientTLS *tls.Config
	// Agents are shims known from the start (embedded mode).
	Agents    map[string]agentapi.Agent
	Keep      int
	Deadlines Deadlines
	// PostCopyThreshold: see Options.PostCopyThreshold.
	PostCopyThreshold int64
	// PollInterval is how often job-nodes are polled for exits.
	PollInterval time.Duration
	Log          *slog.Logger
	Faults       Faults
	// MetricsListen, if set, is where the coordinator serves its Prometheus
	// metrics over HTTP (/metrics); the bound address is in Daemon.MetricsAddr
	// and logged ("serving metrics").
	MetricsListen string
	// Allocations, if set, restrict a user's job-nodes to the nodes of the
	// user's running Slurm job (Server.Allocations).
	Allocations Allocations
	// NodeNet, if valid, is the network job-node addresses come from; they
	// carry its prefix length (Options.NodeNet and NodeBits).
	NodeNet netip.Prefix
	// LocalCheckpoints, Replicas, ReplicaRate: see Options.
	LocalCheckpoints bool
	Replicas         int
	ReplicaRate      int64
	// HostLostAfter: see Options.
	HostLostAfter time.Duration
	// RecoverCatalog: see Options.
	RecoverCatalog bool
}

// allocationsEvery is how often a daemon with Allocations checks that the
// jobs it placed in Slurm jobs still have them.
const allocationsEvery = 5 * time.Second

// Daemon is a running coordinator with its servers.
type Daemon struct {
	C     *Coordinator
	Store *catalog.Store
	Addr  net.Addr // where shims register, if Listen was set
	// MetricsAddr is where the metrics are served, if MetricsListen was set.
	MetricsAddr net.Addr
	servers     []*grpc.Server
	lock        *os.File
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	socket      string
	shims       *shimConns
}

// StartDaemon opens the catalog, recovers from an earlier crash, and starts
// serving. Close stops it.
func StartDaemon(ctx context.Context, cfg DaemonConfig) (_ *Daemon, err error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.StateDir == "" || cfg.CheckpointDir == "" {
		return nil, fmt.Errorf("%w: the coordinator needs a state directory and a checkpoint directory", agentapi.ErrInvalid)
	}
	if cfg.Listen != "" && (cfg.ServerTLS == nil || cfg.ClientTLS == nil) {
		return nil, fmt.Errorf("%w: listening for shims needs TLS certificates (run `torpor coordinator --init-pki`)", agentapi.ErrInvalid)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	// One coordinator per state directory: two would both write the registry.
	lock, err := lockfile.TryLock(filepath.Join(cfg.StateDir, LockName))
	if errors.Is(err, lockfile.ErrHeld) {
		return nil, fmt.Errorf("another coordinator uses state directory %s (it holds %s): %w", cfg.StateDir, LockName, err)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	if cfg.Listen != "" {
		// The state directory is a daemon's from now on: a CLI that finds
		// no coordinator must not embed one over it (see DaemonMarker).
		if err := atomicfile.Write(filepath.Join(cfg.StateDir, DaemonMarker), []byte(cfg.Listen+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	key, err := catalog.LoadOrCreateKey(filepath.Join(cfg.StateDir, "catalog.key"))
	if err != nil {
		return nil, err
	}
	store, err := catalog.Open(cfg.CheckpointDir, key)
	if err != nil {
		return nil, err
	}
	c, err := New(Options{
		StateDir: cfg.StateDir, Store: CatalogStore{store}, Agents: cfg.Agents,
		Log: log, Deadlines: cfg.Deadlines, Keep: cfg.Keep, Faults: cfg.Faults, PostCopyThreshold: cfg.PostCopyThreshold,
		NodeNet: cfg.NodeNet, NodeBits: cfg.NodeNet.Bits(),
		LocalCheckpoints: cfg.LocalCheckpoints, Replicas: cfg.Replicas, ReplicaRate: cfg.ReplicaRate, HostLostAfter: cfg.HostLostAfter,
		RecoverCatalog: cfg.RecoverCatalog,
	})
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &Daemon{C: c, Store: store, cancel: cancel, lock: lock}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	// The socket first: a coordinator that cannot serve it must not act on
	// the registry.
	var unixLis net.Listener
	if cfg.Socket != "" {
		if unixLis, err = listenUnix(cfg.Socket); err != nil {
			return nil, err
		}
		// Removed by Close: only a socket this daemon listens on, never
		// one another coordinator listens on.
		d.socket = cfg.Socket
		defer func() {
			if err != nil {
				unixLis.Close()
			}
		}()
	}
	if err := c.Recover(ctx); err != nil {
		return nil, err
	}
	// The coordinator takes calls from, and dials, shims' certificates only
	// (pki.RequirePeer): its own stays on this host.
	clientTLS := cfg.ClientTLS
	if clientTLS != nil {
		clientTLS = pki.RequirePeer(clientTLS, pki.ShimName)
	}
	d.shims = &shimConns{opts: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(clientTLS))}}
	srv := &Server{C: c, DialShim: d.shims.dial, Stopping: dctx.Done(), Allocations: cfg.Allocations}
	if cfg.MetricsListen != "" {
		m := c.EnableMetrics(srv.ShimCounts)
		if d.MetricsAddr, err = metrics.Serve(dctx, cfg.MetricsListen, m.Registry, log); err != nil {
			return nil, err
		}
	}
	if unixLis != nil {
		lis := unixLis
		gs := grpc.NewServer(grpc.Creds(PeerCredentials{}))
		apiv1.RegisterCoordinatorServer(gs, srv)
		d.serve(gs, lis)
	}
	if cfg.Listen != "" {
		lis, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen for shims on %s: %w", cfg.Listen, err)
		}
		d.Addr = lis.Addr()
		gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.RequirePeer(cfg.ServerTLS, pki.ShimName))))
		apiv1.RegisterCoordinatorServer(gs, srv)
		d.serve(gs, lis)
	}
	iv := cfg.PollInterval
	if iv <= 0 {
		iv = 500 * time.Millisecond
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		c.Watch(dctx, iv)
	}()
	if cfg.Allocations != nil {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			srv.WatchAllocations(dctx, allocationsEvery)
		}()
	}
	log.Info("coordinator started", "socket", cfg.Socket, "listen", d.Addr, "checkpoints", cfg.CheckpointDir)
	return d, nil
}

func (d *Daemon) serve(gs *grpc.Server, lis net.Listener) {
	d.servers = append(d.servers, gs)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		_ = gs.Serve(lis)
	}()
}

// Close stops serving. Calls in progress get their answer (a cancel of the
// job whose end made this process stop, for one) unless they take longer
// than closeGrace; long waits end at once, as the coordinator's context
// does. Jobs keep running on their shims; a coordinator started again with
// the same state directory takes them over.
func (d *Daemon) Close() {
	d.cancel()
	var wg sync.WaitGroup
	for _, gs := range d.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.AfterFunc(closeGrace, gs.Stop)
			defer t.Stop()
			gs.GracefulStop()
		}()
	}
	wg.Wait()
	d.wg.Wait()
	// Before the shims' connections and the state lock go: replicas,
	// sweeps and recoveries in flight would otherwise go on for a while
	// with a new coordinator already started on the same state.
	if !d.C.StopBackground(closeGrace) {
		d.C.log.Warn("background work (replicas, removals of pruned checkpoints) still running as the coordinator stops", "waited", closeGrace)
	}
	if d.shims != nil {
		d.shims.close()
	}
	if d.socket != "" {
		os.Remove(d.socket)
	}
	if d.lock != nil {
		d.lock.Close() // unlocks
	}
}

// LockName is the file in the state directory that a running coordinator
// holds locked (flock): one coordinator per state directory.
const LockName = "coordinator.lock"

// DaemonMarker is the file in the state directory that says a coordinator
// daemon (one that listens for shims) uses it; it holds the address it
// listened on. It stays after the daemon stops: an embedded coordinator is
// not started over a daemon's state (internal/embedded).
const DaemonMarker = "daemon"

// closeGrace bounds how long Close waits for calls in progress.
const closeGrace = 5 * time.Second

// shimConns keeps one client connection per shim address, for the life of
// the coordinator.
type shimConns struct {
	opts  []grpc.DialOption
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// dial returns the client for a shim that (re)registered at address, once
// a connection to it is up. A shim registers when it listens, and again every
// few seconds, so a connection that does not come up means the coordinator
// cannot reach the address the shim advertises (or rejects its certificate):
// the registration fails and the shim says so in its log.
//
// A shim that registers again after being down is listening now, but the
// connection kept from before may be waiting out a reconnect back-off that
// grew while the shim was gone (up to two minutes), and calls would fail as
// unavailable until it ends. Registering resets the back-off.
func (s *shimConns) dial(ctx context.Context, address string) (apiv1.ShimClient, error) {
	conn, err := s.conn(address)
	if err != nil {
		return nil, err
	}
	conn.ResetConnectBackoff()
	conn.Connect()
	ctx, cancel := context.WithTimeout(ctx, shimConnectTimeout)
	defer cancel()
	for st := conn.GetState(); st != connectivity.Ready; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			return nil, fmt.Errorf("no connection within %v (%s): check that %s (the shim's --advertise, else --listen) "+
				"is reachable from the coordinator's host and named in the shim's certificate",
				shimConnectTimeout, strings.ToLower(st.String()), address)
		}
	}
	return apiv1.NewShimClient(conn), nil
}

// shimConnectTimeout bounds how long a registration waits for the
// coordinator's connection to the shim; the shim's own call allows 5s.
const shimConnectTimeout = 3 * time.Second

func (s *shimConns) conn(address string) (*grpc.ClientConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if conn, ok := s.conns[address]; ok {
		return conn, nil
	}
	conn, err := grpc.NewClient(address, s.opts...)
	if err != nil {
		return nil, err
	}
	if s.conns == nil {
		s.conns = map[string]*grpc.ClientConn{}
	}
	s.conns[address] = conn
	return conn, nil
}

func (s *shimConns) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, conn := range s.conns {
		conn.Close()
	}
	s.conns = nil
}

// SocketAnswers reports whether something accepts connections on the unix
// socket sock within a second (a socket file left by a coordinator that
// died does not).
func SocketAnswers(sock string) bool {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// listenUnix listens on a unix socket that every local user can reach (the
// coordinator authorizes each call by the caller's uid), replacing a stale one.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if SocketAnswers(path) {
		return nil, fmt.Errorf("a coordinator already listens on %s (stop it, or use another --socket)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		lis.Close()
		return nil, err
	}
	return lis, nil
}
