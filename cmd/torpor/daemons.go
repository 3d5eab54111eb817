package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/client"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/coordinator/launch"
	"github.com/torpor-hpc/torpor/coordinator/slurm"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/internal/config"
	"github.com/torpor-hpc/torpor/internal/pki"
	"github.com/torpor-hpc/torpor/shim/agent"
	"github.com/torpor-hpc/torpor/shim/criu"
)

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func runCoordinator(ctx context.Context, args []string) error {
	fs := newFlagSet("coordinator", "")
	cfgPath := fs.String("config", "", "configuration file")
	stateDir := fs.String("state-dir", "", "state directory (jobs, catalog key, PKI); default from config")
	ckptDir := fs.String("checkpoint-dir", "", "checkpoint catalog root; default from config")
	socket := fs.String("socket", "", "unix socket for the CLI (default $TORPOR_SOCKET or "+client.DefaultSocket+")")
	listen := fs.String("listen", "127.0.0.1:7800", "address shims register on (mutual TLS); empty: none")
	pkiDir := fs.String("pki", "", "certificate directory (default <state-dir>/pki)")
	initPKI := fs.Bool("init-pki", false, "create a CA and coordinator/shim certificates in the PKI directory, then exit")
	pkiHosts := fs.String("pki-hosts", "127.0.0.1,localhost", "comma-separated addresses and names the certificates are valid for (with --init-pki)")
	pkiShimHosts := fs.String("pki-shim-hosts", "", "with --init-pki: comma-separated cluster host names (a shim's --host) that each get a shim certificate of their own in <pki>/hosts/HOST/, with which their shim can register only as that host; copy that directory to the host as its shim's --pki")
	keep := fs.Int("keep", 0, "keep only the newest K checkpoints per job (0: all); older ones go once the newest one's images are on disk (fsync)")
	postCopy := fs.String("postcopy-threshold", "", "private memory of a job-node from which `torpor migrate` (--postcopy=auto) uses post-copy, e.g. 128M; off: never; default from config (postcopy_threshold), else 128M")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics over HTTP at ADDR (/metrics; port 0: any, logged); default from config (metrics_listen), else off")
	nodeNet := fs.String("node-net", "", "IPv4 network job-node addresses come from, e.g. 10.99.0.0/16, used by no host (job-nodes carry its prefix length); default from config (node_net), else "+coordinator.DefaultNodeNet.String()+" as /"+strconv.Itoa(coordinator.DefaultNodeBits)+" (the simulated cluster's)")
	localCkpts := fs.Bool("local-checkpoints", false, "keep every checkpoint's images on the hosts that dumped them, in their shims' --image-dir, with --replicas copies elsewhere; the checkpoint directory keeps only the signed job manifests; default from config (local_checkpoints)")
	replicas := fs.Int("replicas", 0, "with --local-checkpoints: how many other hosts keep a copy of each job-node's images, made in the background after each checkpoint (0: the default, "+strconv.Itoa(coordinator.DefaultReplicas)+"; -1: none); default from config (replicas)")
	replicaRate := fs.String("replica-rate", "", "with --local-checkpoints: bytes per second each replica copy takes at most, e.g. 64M; default from config (replica_rate), else "+strconv.Itoa(coordinator.DefaultReplicaRate>>20)+"M")
	hostLost := fs.Duration("host-lost-after", coordinator.DefaultHostLostAfter, "a host whose shim stops answering and has not registered (it does every 5s) for this long is lost: its job-nodes count as gone, failing their job, and no restart is placed there")
	recoverCatalog := fs.Bool("recover-catalog", false, "bring back from the shims, as each registers, the host-local checkpoints the checkpoint directory lacks (each kept on its hosts with its signed job manifest): after the checkpoint directory was lost, or the coordinator moved to another host with its key (<state-dir>/catalog.key) and PKI")
	slurmOnly := fs.Bool("slurm", false, "place a user's job-nodes only on the nodes of the user's running Slurm job (asked of squeue; root is not restricted); default from config (slurm)")
	var faults faultFlag
	fs.Var(&faults, "fault", "switch on a fault-injection point, for tests (repeatable): "+strings.Join(fault.Names(fault.Coordinator), ", "))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if *stateDir == "" {
		*stateDir = cfg.StateDir
	}
	if *ckptDir == "" {
		*ckptDir = cfg.CheckpointDir
	}
	if *pkiDir == "" {
		*pkiDir = filepath.Join(*stateDir, "pki")
	}
	if *initPKI {
		return initCertificates(*pkiDir, strings.Split(*pkiHosts, ","), splitList(*pkiShimHosts))
	}
	log := newLogger(*logLevel)
	if *metricsListen == "" {
		*metricsListen = cfg.MetricsListen
	}
	if *postCopy == "" {
		*postCopy = cfg.PostCopyThreshold
	}
	threshold, err := parsePostCopyThreshold(*postCopy)
	if err != nil {
		return err
	}
	dc := coordinator.DaemonConfig{
		StateDir: *stateDir, CheckpointDir: *ckptDir, Socket: client.SocketPath(*socket),
		Listen: *listen, Keep: *keep, Log: log, MetricsListen: *metricsListen, PostCopyThreshold: threshold,
	}
	if dc.NodeNet, err = parseNodeNet(firstOf(*nodeNet, cfg.NodeNet)); err != nil {
		return err
	}
	if *hostLost < 10*time.Second {
		return fmt.Errorf("--host-lost-after %v: give at least 10s (shims register every 5s)", *hostLost)
	}
	dc.HostLostAfter = *hostLost
	dc.RecoverCatalog = *recoverCatalog
	dc.LocalCheckpoints = *localCkpts || cfg.LocalCheckpoints
	if dc.Replicas = *replicas; dc.Replicas == 0 {
		dc.Replicas = cfg.Replicas
	}
	if dc.Replicas < -1 {
		return fmt.Errorf("--replicas %d: give how many other hosts keep a copy (0 for the default, -1 for none)", dc.Replicas)
	}
	if r := firstOf(*replicaRate, cfg.ReplicaRate); r != "" {
		n, err := launch.ParseSize(r)
		if err != nil || n <= 0 {
			return fmt.Errorf("--replica-rate %s: give bytes per second with a suffix K, M or G (powers of 1024), e.g. 64M", r)
		}
		dc.ReplicaRate = n
	}
	if *slurmOnly || cfg.Slurm {
		dc.Allocations = slurm.Allocations{}
		log.Info("placing users' job-nodes only inside their Slurm allocations")
	}
	if *listen != "" {
		if dc.ServerTLS, dc.ClientTLS, err = pki.Configs(*pkiDir, "coordinator", ""); err != nil {
			return err
		}
		// The coordinator dials shims with its own certificate; the
		// shim's name is checked against the address it registered.
		dc.ClientTLS.ServerName = ""
	}
	fset, err := fault.Parse(fault.Coordinator, faults)
	if err != nil {
		return err
	}
	// Each coordinator fault point ends the process (status 86) where a
	// crash would.
	crashAt := func(p fault.Point, where string) func(args ...any) {
		if !fset.Has(p) {
			return nil
		}
		log.Warn("fault injection switched on: the coordinator exits "+where, "point", p)
		return func(args ...any) {
			log.Error("fault injection: crashing "+where, args...)
			os.Exit(86)
		}
	}
	if crash := crashAt(fault.CoordinatorCrashBeforeCommit, "before committing a checkpoint"); crash != nil {
		dc.Faults.BeforeCommit = func(job string) error { crash("job", job); return nil }
	}
	if crash := crashAt(fault.CoordinatorCrashAfterRestore, "when a migration's destination restored"); crash != nil {
		dc.Faults.AfterRestore = func(job, node string) error { crash("job", job, "node", node); return nil }
	}
	if crash := crashAt(fault.CoordinatorCrashPastNoReturn, "past a migration's point of no return"); crash != nil {
		dc.Faults.PastNoReturn = func(job, node string) { crash("job", job, "node", node) }
	}
	d, err := coordinator.StartDaemon(ctx, dc)
	if err != nil {
		return err
	}
	<-ctx.Done()
	d.Close()
	return nil
}

func initCertificates(dir string, hosts, shimHosts []string) error {
	for _, h := range shimHosts {
		if err := pki.CheckHostName(h); err != nil {
			return fmt.Errorf("--pki-shim-hosts: %w", err)
		}
	}
	ca, err := pki.EnsureCA(dir)
	if err != nil {
		return err
	}
	if err := ca.Issue(dir, "coordinator", pki.RoleBoth, hosts); err != nil {
		return err
	}
	if err := ca.Issue(dir, "shim", pki.RoleBoth, hosts); err != nil {
		return err
	}
	fmt.Printf("certificates for %s in %s (copy ca.pem, shim.pem and shim-key.pem to every shim host)\n", strings.Join(hosts, ", "), dir)
	for _, h := range shimHosts {
		hdir := filepath.Join(dir, "hosts", h)
		if err := ca.IssueHostShim(hdir, h, hosts); err != nil {
			return err
		}
	}
	if len(shimHosts) > 0 {
		fmt.Printf("shim certificates of their own for %s in %s/hosts/HOST (copy that directory to HOST as its shim's --pki, instead of the shared shim.pem and shim-key.pem)\n", strings.Join(shimHosts, ", "), dir)
	}
	return nil
}

func runShim(ctx context.Context, args []string) error {
	fs := newFlagSet("shim", "")
	cfgPath := fs.String("config", "", "configuration file")
	host := fs.String("host", "", "this host's name in the cluster (default: the hostname)")
	listen := fs.String("listen", "127.0.0.1:0", "address of the shim service (mutual TLS)")
	advertise := fs.String("advertise", "", "address the coordinator dials (default: the listen address)")
	join := fs.String("join", "", "coordinator address to register with (required)")
	pkiDir := fs.String("pki", "", "certificate directory with ca.pem, shim.pem, shim-key.pem (default <state-dir>/pki)")
	netns := fs.String("netns", "", "network namespace job-node sandboxes attach to (a simulated host); default: this one")
	bridge := fs.String("bridge", "br0", "bridge job-node sandboxes join")
	cgroupParent := fs.String("cgroup-parent", "", "cgroup v2 directory for job-node cgroups (default from config)")
	runDir := fs.String("run-dir", "/run/torpor", "directory for job-node output files (same path on every host)")
	criuPath := fs.String("criu", "", "CRIU binary (default: $TORPOR_CRIU, config, "+criu.DefaultPrefix+", $PATH)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics over HTTP at ADDR (/metrics; port 0: any, logged); default from config (shim_metrics_listen), else off")
	userSocket := fs.String("user-socket", "", "relay this host's users' commands (torpor batch, ps, ...) to the coordinator from this unix socket, e.g. "+client.DefaultUserSocket+"; default from config (user_socket), else none")
	imageDir := fs.String("image-dir", "", "this host's own directory for images (a node-local disk, root's): migrations stream their images from shim to shim through it instead of the checkpoint directory; default from config (image_dir), else none")
	vxlan := fs.String("vxlan", "", "ADDR,ADDR,...: every host's address on the routed network that joins the hosts (this one's included; the same list on every host): job-node traffic between hosts goes over VXLAN (UDP 4789) instead of a shared L2 segment; default from config (vxlan_peers), else the bridge alone")
	vxlanID := fs.Int("vxlan-id", 0, fmt.Sprintf("VXLAN network identifier, the same on every host (default from config (vxlan_id), else %d)", agent.DefaultVXLANID))
	var faults faultFlag
	fs.Var(&faults, "fault", "switch on a fault-injection point, for tests (repeatable): "+strings.Join(fault.Names(fault.Shim), ", "))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fset, err := fault.Parse(fault.Shim, faults)
	if err != nil {
		return err
	}
	if *join == "" {
		return fmt.Errorf("shim needs --join COORDINATOR:PORT")
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if *host == "" {
		if *host, err = os.Hostname(); err != nil {
			return err
		}
	}
	if *pkiDir == "" {
		*pkiDir = filepath.Join(cfg.StateDir, "pki")
	}
	if *cgroupParent == "" {
		*cgroupParent = "/" + strings.Trim(cfg.CgroupRoot, "/")
	}
	bin, err := criu.Locator{Flag: *criuPath, Config: cfg.CRIU}.Find()
	if err != nil {
		return err
	}
	joinHost := *join
	if i := strings.LastIndex(joinHost, ":"); i >= 0 {
		joinHost = joinHost[:i]
	}
	peers := cfg.VXLANPeers
	if *vxlan != "" {
		peers = strings.Split(*vxlan, ",")
	}
	vxlanPeers, err := parseIPs(peers)
	if err != nil {
		return fmt.Errorf("--vxlan: %w", err)
	}
	if *vxlanID == 0 {
		*vxlanID = cfg.VXLANID
	}
	if *vxlanID < 0 || *vxlanID >= 1<<24 {
		return fmt.Errorf("--vxlan-id %d: a VXLAN network identifier is 1..16777215", *vxlanID)
	}
	serverTLS, clientTLS, err := pki.Configs(*pkiDir, "shim", joinHost)
	if err != nil {
		return err
	}
	if hosts := pki.OwnHosts(serverTLS); len(hosts) > 0 && !slices.Contains(hosts, *host) {
		return fmt.Errorf("the shim certificate in %s is for host %s, not %s: start this shim with --host %s, or give it %s's own (torpor coordinator --init-pki --pki-shim-hosts %s, then copy <pki>/hosts/%s here)",
			*pkiDir, strings.Join(hosts, ", "), *host, hosts[0], *host, *host, *host)
	}
	return agent.Serve(ctx, agent.ServeConfig{
		Agent: agent.Config{Host: *host, HostNetNS: *netns, Bridge: *bridge, CgroupParent: *cgroupParent,
			RunDir: *runDir, CRIU: bin, Log: newLogger(*logLevel), Faults: fset, ImageDir: firstOf(*imageDir, cfg.ImageDir)},
		Listen: *listen, Advertise: *advertise, Join: *join, ServerTLS: serverTLS, ClientTLS: clientTLS,
		MetricsListen: firstOf(*metricsListen, cfg.ShimMetricsListen), UserSocket: firstOf(*userSocket, cfg.UserSocket),
		VXLANPeers: vxlanPeers, VXLANID: *vxlanID,
	})
}

// splitList splits a comma-separated flag, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseIPs parses IPv4 addresses ("" entries skipped).
func parseIPs(ss []string) ([]net.IP, error) {
	var out []net.IP
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil || ip.To4() == nil {
			return nil, fmt.Errorf("%q is not an IPv4 address", s)
		}
		out = append(out, ip)
	}
	return out, nil
}

// faultFlag collects repeated --fault NAME flags.
type faultFlag []string

func (f *faultFlag) String() string { return strings.Join(*f, ",") }

func (f *faultFlag) Set(v string) error {
	*f = append(*f, v)
	return nil
}

// firstOf returns the first non-empty string.
func firstOf(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// parsePostCopyThreshold reads --postcopy-threshold: a size, "off" (-1 for
// coordinator.Options: never), or "" (0: the default).
func parsePostCopyThreshold(s string) (int64, error) {
	switch s {
	case "":
		return 0, nil
	case "off":
		return -1, nil
	}
	n, err := launch.ParseSize(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--postcopy-threshold %s: give a size with a suffix K, M, G or T (powers of 1024), e.g. 128M, or off", s)
	}
	return n, nil
}

// parseNodeNet parses --node-net ("" is the default, an invalid prefix).
func parseNodeNet(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("--node-net %q: want an IPv4 network from /8 to /30, e.g. 10.99.0.0/16", s)
	}
	return p.Masked(), nil
}
