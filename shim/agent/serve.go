package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/internal/pki"
	"github.com/torpor-hpc/torpor/metrics"
	"github.com/torpor-hpc/torpor/netquiesce"
)

// ServeConfig runs an Agent as the `torpor shim` daemon.
type ServeConfig struct {
	Agent Config
	// Listen is the address the Shim service listens on (mutual TLS).
	Listen string
	// Advertise is the address the coordinator dials; default: the listener's.
	Advertise string
	// Join is the coordinator's address; the shim registers there and
	// registers again every RegisterEvery, so a restarted coordinator learns
	// its shims back.
	Join          string
	RegisterEvery time.Duration
	ServerTLS     *tls.Config
	ClientTLS     *tls.Config
	// Ready, if set, receives the listening address once serving.
	Ready chan<- net.Addr
	// MetricsListen, if set, is where the shim serves its Prometheus
	// metrics over HTTP (/metrics); the bound address is logged ("serving
	// metrics").
	MetricsListen string
	// UserSocket, if set, is a unix socket on which the shim relays its
	// host's users' commands to the coordinator (relay.go); needs Join.
	UserSocket string
	// VXLANPeers, if set, are the addresses of every host of the cluster on
	// the network that joins them (this host's included): the shim puts a
	// VXLAN port on its bridge that carries job-node traffic to them
	// (netquiesce.VXLAN), for hosts that share no L2 segment.
	VXLANPeers []net.IP
	// VXLANID is the overlay's VXLAN network identifier (0: DefaultVXLANID).
	VXLANID int
}

// VXLANDevice is the name of the shim's VXLAN port on its bridge, and
// DefaultVXLANID the overlay's default network identifier.
const (
	VXLANDevice    = "tvx0"
	DefaultVXLANID = 4242
)

// Serve runs the shim until ctx ends, then destroys its job-nodes: a shim
// that stops takes its job-nodes with it (checkpoint them first).
func Serve(ctx context.Context, cfg ServeConfig) error {
	if cfg.ServerTLS == nil || cfg.ClientTLS == nil {
		return errors.New("the shim needs TLS certificates (see `torpor coordinator --init-pki`)")
	}
	if cfg.UserSocket != "" && cfg.Join == "" {
		return errors.New("--user-socket relays users' commands to the coordinator: it needs --join")
	}
	var cl apiv1.CoordinatorClient
	var coordConn *grpc.ClientConn
	if cfg.Join != "" {
		// Only the coordinator's certificate answers here: another shim's
		// (which every shim host holds) cannot pose as the coordinator.
		conn, err := grpc.NewClient(cfg.Join, grpc.WithTransportCredentials(credentials.NewTLS(pki.RequirePeer(cfg.ClientTLS, pki.CoordinatorName))))
		if err != nil {
			return fmt.Errorf("dial coordinator %s: %w", cfg.Join, err)
		}
		defer conn.Close()
		coordConn = conn
		cl = apiv1.NewCoordinatorClient(conn)
		cfg.Agent.Fence = func(ctx context.Context, req agentapi.FenceRequest) ([]byte, error) {
			nodes := make([]int32, len(req.Nodes))
			for i, n := range req.Nodes {
				nodes[i] = int32(n)
			}
			rep, err := cl.Fence(ctx, &apiv1.FenceRequest{Job: req.Job, Node: int32(req.Node), Nodes: nodes,
				Signature: req.Signature, Seq: req.Seq, Data: req.Data})
			if err != nil {
				return nil, err
			}
			return rep.Data, nil
		}
	}
	cfg.Agent.PeerTLS = pki.RequirePeer(cfg.ClientTLS, pki.ShimName)
	a, err := New(cfg.Agent)
	if err != nil {
		return err
	}
	if err := a.clearParts(); err != nil {
		return err
	}
	if err := a.clearMigrations(); err != nil {
		return err
	}
	var m *metrics.Shim
	if cfg.MetricsListen != "" {
		m = metrics.NewShim(a.Nodes)
		a.cfg.Metrics = m
		if _, err := metrics.Serve(ctx, cfg.MetricsListen, m.Registry, a.log); err != nil {
			return err
		}
	}

	defer a.Close(context.WithoutCancel(ctx))
	if err := a.SetupBridge(cfg.VXLANPeers, cfg.VXLANID); err != nil {
		return err
	}
	// Job-nodes a previous shim of this host left when it died are ours now.
	if n, err := a.Adopt(ctx); err != nil {
		a.log.Error("some job-nodes of a previous shim could not be adopted", "adopted", n, "err", err)
	} else if n > 0 {
		a.log.Info("adopted the job-nodes of a previous shim", "adopted", n)
	}
	for p, on := range cfg.Agent.Faults {
		if on {
			a.log.Warn("FAULT INJECTION is on: this shim will fail on purpose", "point", p)
		}
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	srv := agentapi.Server{Agent: metrics.Instrument(a, m), Outputs: a, Exiting: a}
	if a.StreamsImages() {
		srv.ImageServer, srv.Holder = a, a
	}
	gs := agentapi.NewShimServer(cfg.ServerTLS, srv)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	defer gs.Stop()
	adv := cfg.Advertise
	if adv == "" {
		adv = lis.Addr().String()
	}
	if cfg.UserSocket != "" {
		ulis, err := listenUsers(cfg.UserSocket)
		if err != nil {
			return err
		}
		uctx, ucancel := context.WithCancel(ctx)
		defer ucancel()
		go serveUsers(uctx, ulis, coordConn, cfg.Agent.Host, a.log)
		a.log.Info("relaying users' commands to the coordinator", "socket", cfg.UserSocket)
	}
	a.log.Info("shim serving", "listen", lis.Addr(), "advertise", adv, "join", cfg.Join)
	if cfg.Ready != nil {
		cfg.Ready <- lis.Addr()
	}
	if cfg.Join == "" {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		}
	}
	every := cfg.RegisterEvery
	if every <= 0 {
		every = 5 * time.Second
	}
	registered := false
	postCopy := a.PostCopy()
	for {
		var held []*apiv1.NodeRef
		for _, r := range a.JobNodes() {
			held = append(held, agentapi.RefToPB(r))
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cl.Register(rctx, &apiv1.RegisterRequest{Host: cfg.Agent.Host, Address: adv, RunDir: a.cfg.RunDir, VerifiesImages: true, PostCopy: postCopy,
			StreamsImages: a.StreamsImages(), Nodes: held})
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Warn("register with coordinator", "coordinator", cfg.Join, "err", err)
			registered = false
			m.Registered(false)
		case err == nil && !registered:
			a.log.Info("registered with coordinator", "coordinator", cfg.Join)
			registered = true
			m.Registered(true)
		}
		wait := every
		if !registered {
			wait = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-time.After(wait):
		}
	}
}

// SetupBridge pins the bridge's Ethernet address and, with VXLAN peers
// (every host's address on the routed network, this one's included),
// stretches the bridge over that network to them (ServeConfig.VXLANPeers;
// vxlanID 0 is DefaultVXLANID). Without its overlay a host would run
// job-nodes that cannot reach their peers: that is an error, while a MAC
// that cannot be pinned is only a warning.
func (a *Agent) SetupBridge(peers []net.IP, vxlanID int) error {
	hn, err := a.hostNet()
	if err != nil {
		if len(peers) > 0 {
			return fmt.Errorf("vxlan: %w", err)
		}
		a.log.Warn("cannot open the host's network namespace", "err", err)
		return nil
	}
	defer hn.Close()
	// The bridge's own address must not follow the sandboxes' veths
	// (netquiesce.PinMAC): the host's traffic on it would stall.
	if err := hn.PinMAC(a.cfg.Bridge); err != nil {
		a.log.Warn("bridge: cannot pin its Ethernet address; job-nodes that join and leave it may change it", "bridge", a.cfg.Bridge, "err", err)
	}
	if len(peers) == 0 {
		return nil
	}
	local, err := hn.LocalAddr(peers)
	if err != nil {
		return fmt.Errorf("vxlan: which of the peers is this host: %w (list every host's address on the network that joins them, this one's included)", err)
	}
	v := netquiesce.VXLAN{Name: VXLANDevice, ID: vxlanID, Local: local, Peers: peers, Bridge: a.cfg.Bridge}
	if v.ID == 0 {
		v.ID = DefaultVXLANID
	}
	if err := hn.SetVXLAN(v); err != nil {
		return err
	}
	a.log.Info("job-node traffic to other hosts goes over VXLAN", "device", v.Name, "id", v.ID, "local", local, "peers", len(peers)-1)
	return nil
}
