// Package agent is the host side of torpor's protocol: it implements
// agentapi.Agent with real job-node sandboxes, the cgroup freezer,
// netquiesce's eBPF lock and drain, and CRIU. One Agent serves one host.
package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/metrics"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/pmix/link"
	"github.com/torpor-hpc/torpor/shim/appfiles"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/sandbox"
	"github.com/torpor-hpc/torpor/shim/verbs"
	"golang.org/x/sys/unix"
)

// Config describes the host an Agent serves.
type Config struct {
	// Host is this host's name, as the coordinator knows it.
	Host string
	// HostNetNS is the network namespace job-node sandboxes attach to (a
	// simulated host), or "" for the shim's own.
	HostNetNS string
	// Bridge is the bridge in that namespace that sandboxes join.
	Bridge string
	// CgroupParent is the cgroup v2 directory (below the mount) under which
	// job-node cgroups are created; default sandbox.DefaultCgroupParent.
	CgroupParent string
	// RunDir holds per-job-node files that must have the same path on every
	// host: the job-node's output. Default /run/torpor.
	RunDir string
	// CRIU is the binary to run.
	CRIU criu.Binary
	Log  *slog.Logger
	// Fence forwards pmixd's fences to the coordinator (MPI job-nodes).
	Fence FenceFunc
	// Faults are the fault-injection points switched on (tests only; see
	// package fault): ShimExitInDump, CRIUKillInDump and HoldInRestore.
	Faults fault.Set
	// NoAppFiles switches off the capture of the application's files at a
	// dump (package appfiles): for benchmarks and diagnosis only (the
	// benchmark B6 measures what the capture costs). A checkpoint taken
	// without it holds none of the files, and CRIU refuses to restore it
	// once a file the job holds open changed size.
	NoAppFiles bool
	// Metrics, if set, records CRIU restore times and the bytes restores
	// read (the rest is counted by metrics.Instrument around the Agent).
	Metrics *metrics.Shim
	// ScratchDir is where a restore expands compressed memory images for
	// CRIU (removed when the restore ends); it must be root's and writable
	// only by root. Default <RunDir>/shims/<Host>/restore: put it on a
	// node-local disk when RunDir is a small tmpfs.
	ScratchDir string
	// ImageDir, if set, is this host's own directory for images (root's,
	// writable only by root; a node-local disk): a migration's images are
	// dumped there and fetched from there by the destination's shim
	// (stream.go), instead of going through the checkpoint directory.
	ImageDir string
	// PeerTLS is what the shim dials other shims with (its certificate of
	// the cluster's CA), to fetch images.
	PeerTLS *tls.Config
	// LazyRestoreFrom: a restore (not a post-copy migration's) whose memory
	// images hold at least this many bytes has its memory filled by a
	// lazy-pages daemon reading them here (lazyfill.go); 0 means
	// DefaultLazyRestoreFrom, a negative value never.
	LazyRestoreFrom int64
}

// Agent is one host's shim logic.
type Agent struct {
	cfg Config
	log *slog.Logger
	drv *criu.Driver

	mu    sync.Mutex
	nodes map[string]*node // "<job>/<node>"
	// written is, per job-node ("<job>/<node>"), the directories its last
	// checkpoint's dump wrote, until Sync makes them durable.
	written map[string]writtenDump
	// storing holds a lock per copy of the checkpoint store being made
	// ("<handle>/<node>"): a replica and a restart may fetch the same one.
	storing keyedLocks
	// tree is held while directories shared by job-nodes (a job's, a
	// checkpoint's) are made and filled (makeBelow), and while the empty ones
	// are removed (pruneAbove): without it, one job-node's removal of its
	// job's directory, empty for an instant, fails another's making of a
	// directory or file in it (ENOENT).
	tree sync.Mutex
	// exits passes job-node exits to WatchExits.
	exits exitHub

	// criuStarted, if set (tests), learns each CRIU run's PID.
	criuStarted func(op string, pid int)
	// held says fault.HoldInRestore struck (it does once).
	held atomic.Bool
	// stalled says fault.StallPagesInFlight struck (it does once).
	stalled atomic.Bool
	// criuEvent, if set (tests), is told each of CRIU's notifications while
	// CRIU waits for the answer.
	criuEvent func(op string, ev criu.Event)
	// afterRestore, if set (tests), runs once CRIU restored a tree, before
	// Restore checks its context.
	afterRestore func()
	// filling, if set (tests), runs when a restore starts waiting for its
	// lazy-pages daemon (pid) to fill the frozen tree's memory.
	filling func(pid int)
	// selfKill and killCRIU are how the dump fault points strike (killSelf
	// and killPID); tests, which cannot die, replace them.
	selfKill func()
	killCRIU func(pid int) error
}

type node struct {
	spec     agentapi.NodeSpec
	job      string
	sb       *sandbox.Sandbox
	lock     *netquiesce.Lock
	veth     string
	netns    string
	cgroup   string // below the cgroup2 mount
	exitFile string // where the init writes its exit status
	// moved says the job-node arrived by restore: announce its address on unlock.
	moved        bool
	restoredFrom string // the checkpoint it was restored from, while moved
	// solicit says it was unlocked after a restore: at thaw, when every
	// job-node is unlocked, ask for the neighbours its lock left unresolved.
	solicit bool
	// link serves the job-node's pmixd, if it runs one, on linkPath.
	link     *link.Server
	linkPath string
	// captured is the newest capture of the application's files (at a dump,
	// or the one a restore put back): a file that only grew since is
	// captured by its length.
	captured *appfiles.Index

	// mu guards the post-copy state, which goroutines of its own change.
	mu sync.Mutex
	// pages is the page server of a post-copy migration's source, until
	// the job-node is destroyed or rolled back.
	pages *pageServer
	// pull is the lazy-pages daemon of a post-copy migration's destination;
	// pulling stays true until it has every page.
	pull    *pagePull
	pulling bool
	// stalled: fault.StallPagesInFlight holds the pull's pages.
	stalled bool
	// local is the checkpoint handle of the local dump this shim writes or
	// keeps, and serves (stream.go), "" when there is none. localDone is
	// closed when that dump has ended, with localSHA (its node manifest's
	// SHA-256) or localErr set; localSet is closed, and replaced, whenever
	// local changes.
	local     string
	localDone chan struct{}
	localSHA  string
	localErr  error
	localSet  chan struct{}
	// localHasher hashes the local dump being written (stop-and-copy, no
	// codec): the sender releases to it what it has sent, which the hasher
	// frees once hashed (catalog.StreamHasher.Release).
	localHasher *catalog.StreamHasher
	// criu is the CRIU started ahead for the next dump (warmCRIU), and
	// warming is closed once the one being started is in criu; gone: the
	// job-node is being destroyed, nothing is started for it any more.
	criu    *criu.Worker
	warming chan struct{}
	gone    bool
}

var _ agentapi.Agent = (*Agent)(nil)

// ErrNoNode: the shim has no such job-node.
var ErrNoNode = errors.New("no such job-node on this host")

// New returns an Agent for a host.
func New(cfg Config) (*Agent, error) {
	if cfg.Host == "" || cfg.Bridge == "" {
		return nil, errors.New("agent needs a host name and a bridge")
	}
	if err := closeInheritedOnExec(); err != nil {
		return nil, err
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = sandbox.DefaultCgroupParent
	}
	if cfg.RunDir == "" {
		cfg.RunDir = "/run/torpor"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ImageDir != "" {
		if !filepath.IsAbs(cfg.ImageDir) {
			return nil, fmt.Errorf("image directory %q: give an absolute path", cfg.ImageDir)
		}
		if err := os.MkdirAll(cfg.ImageDir, 0o700); err != nil {
			return nil, fmt.Errorf("image directory: %w", err)
		}
		if err := rootOnly(cfg.ImageDir, cfg.ImageDir); err != nil {
			return nil, fmt.Errorf("image directory: %w", err)
		}
	}
	log := cfg.Log.With("host", cfg.Host)
	drv := criu.NewDriver(cfg.CRIU, log)
	if cfg.CRIU.Path != "" {
		// Before the first checkpoint, not inside it (once per machine).
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		drv.Prepare(ctx)
		cancel()
	}
	return &Agent{cfg: cfg, log: log, drv: drv, nodes: map[string]*node{},
		selfKill: killSelf, killCRIU: killPID}, nil
}

func key(job, n string) string { return job + "/" + n }

func checkNames(job, n string) error {
	if err := agentapi.CheckName("job id", job); err != nil {
		return err
	}
	return agentapi.CheckName("job-node name", n)
}

func (a *Agent) get(ref agentapi.NodeRef) (*node, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.nodes[key(ref.Job, ref.Node)]
	if !ok || n == nil { // nil: still being created
		return nil, fmt.Errorf("%w: %s/%s on %s (%w)", ErrNoNode, ref.Job, ref.Node, a.cfg.Host, agentapi.ErrNotFound)
	}
	return n, nil
}

// OutputPath is where a job-node's stdout and stderr go. The path is the same
// on every host, as CRIU restores the open file by path.
func (a *Agent) OutputPath(job, n string) string {
	return filepath.Join(a.cfg.RunDir, "jobs", job, n+".out")
}

// closeInheritedOnExec marks every descriptor of this process from 3 on
// close-on-exec. Go opens its own so; one this process inherited without
// it (a shell's saved descriptor, a supervisor's socket) would otherwise
// pass into every job-node the shim starts, where the job's owner could use
// it, and where CRIU cannot dump it when it belongs to another mount
// namespace (a shim started in a mount namespace of its own: "Can't lookup
// mount=N for fd=10 path=/dev/null").
func closeInheritedOnExec() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list this process's descriptors: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		// The directory's own descriptor is closed by now: EBADF.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("mark descriptor %d close-on-exec: %w", fd, err)
		}
	}
	return nil
}

// maxOutputRead caps what ReadOutput returns at once.
const maxOutputRead = 1 << 20

// ReadOutput implements agentapi.OutputReader: job-node ref's output file
// (in the job's run directory, which only root may change), from off, at
// most max bytes (and maxOutputRead), with its size now. A job-node whose
// file is not there yet has size 0.
func (a *Agent) ReadOutput(_ context.Context, ref agentapi.NodeRef, off, max int64) ([]byte, int64, error) {
	if err := checkNames(ref.Job, ref.Node); err != nil {
		return nil, 0, err
	}
	if off < 0 {
		return nil, 0, fmt.Errorf("%w: output of %s/%s from offset %d", agentapi.ErrInvalid, ref.Job, ref.Node, off)
	}
	f, err := os.OpenFile(a.OutputPath(ref.Job, ref.Node), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("output of %s/%s is not a regular file", ref.Job, ref.Node)
	}
	size := st.Size()
	if max <= 0 || max > maxOutputRead {
		max = maxOutputRead
	}
	if off >= size {
		return nil, size, nil
	}
	buf := make([]byte, min(max, size-off))
	k, err := f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	return buf[:k], size, nil
}

// exitPath is where a job-node's init writes its exit status: beside its
// output, the same path on every host (a restored init writes it there).
func (a *Agent) exitPath(job, n string) string {
	return a.OutputPath(job, n) + ".exit"
}

// checkImageCreds refuses images in which CRIU, root, would restore a task
// of a user's job-node with credentials other than its owner's (defence in
// depth: the manifests' HMAC already refuses images nobody signed).
//
// With imgs (a restart's images, held against their node manifest), the
// credentials come from the very bytes whose SHA-256 was checked: rewriting
// a file after the check changes nothing of what is checked.
func checkImageCreds(dir string, imgs *catalog.NodeImages, spec agentapi.NodeSpec) error {
	if spec.User.Root() {
		return nil
	}
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	if imgs != nil {
		read = imgs.ReadFile
	}
	creds, err := criu.ReadCredsFrom(read)
	if err != nil {
		return fmt.Errorf("read the credentials in the images: %w", err)
	}
	var groups []uint32
	for _, g := range spec.User.Groups {
		groups = append(groups, uint32(g))
	}
	return criu.CheckCreds(creds, uint32(spec.User.UID), uint32(spec.User.GID), groups)
}

// userOf is who a job-node's processes run as.
func userOf(spec agentapi.NodeSpec) *sandbox.User {
	if spec.User.Root() {
		return nil
	}
	return &sandbox.User{UID: spec.User.UID, GID: spec.User.GID, Groups: spec.User.Groups}
}

// filesUser is the job's owner, whose identity the shim takes on for every
// path operation on the application's files.
func filesUser(spec agentapi.NodeSpec) *appfiles.User {
	if spec.User.Root() {
		return nil
	}
	return &appfiles.User{UID: spec.User.UID, GID: spec.User.GID, Groups: spec.User.Groups}
}

// jobDir creates the job's run directory, root's and readable by all: the
// job's owner uses the files the shim makes in it for them, and can neither
// add nor replace any.
func (a *Agent) jobDir(job string) error {
	dir := filepath.Join(a.cfg.RunDir, "jobs", job)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return rootOnly(dir, a.cfg.RunDir)
}

// rootOnly checks p and each directory above it up to top: each must belong
// to root, be no symbolic link, and be writable by no one else. What the
// shim reads or makes there cannot then be added or replaced by a user.
func rootOnly(p, top string) error {
	top = filepath.Clean(top)
	for d := filepath.Clean(p); ; d = filepath.Dir(d) {
		st, err := os.Lstat(d)
		if err != nil {
			return err
		}
		uid := -1
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			uid = int(sys.Uid)
		}
		if uid != 0 || st.Mode()&os.ModeSymlink != 0 || st.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("%s must be root's and writable only by root (it is %v, uid %d): fix it or choose another run directory", d, st.Mode(), uid)
		}
		if d == top || d == "/" {
			return nil
		}
	}
}

// existsLocked is ErrExists if this shim holds job-node job/node (or is
// making it). Called with a.mu held.
func (a *Agent) existsLocked(job, node string) error {
	if _, ok := a.nodes[key(job, node)]; ok {
		return fmt.Errorf("%w: job-node %s/%s already exists on %s", agentapi.ErrExists, job, node, a.cfg.Host)
	}
	return nil
}

// create makes the sandbox and attaches (unlocked) the network lock to the
// host end of its veth, where the programs stay outside the CRIU images. A
// restore target (restoring) does not announce its address yet: that
// happens at its unlock.
func (a *Agent) create(ctx context.Context, job string, spec agentapi.NodeSpec, restoring bool) (*node, error) {
	if err := checkNames(job, spec.Name); err != nil {
		return nil, err
	}
	a.mu.Lock()
	if err := a.existsLocked(job, spec.Name); err != nil {
		a.mu.Unlock()
		return nil, err
	}
	a.nodes[key(job, spec.Name)] = nil // reserve
	a.mu.Unlock()
	n := &node{spec: spec, job: job, veth: vethName(job, spec.Name), netns: a.netnsName(job, spec.Name),
		cgroup: filepath.Join(a.cfg.CgroupParent, a.cfg.Host, job, spec.Name), exitFile: a.exitPath(job, spec.Name)}
	ok := false
	defer func() {
		if !ok {
			a.mu.Lock()
			delete(a.nodes, key(job, spec.Name))
			a.mu.Unlock()
		}
	}()
	sb, err := sandbox.New(ctx, sandbox.Config{
		Name:         key(job, spec.Name),
		NetNS:        n.netns,
		Hostname:     spec.Hostname,
		Address:      spec.IP,
		HostNetNS:    a.cfg.HostNetNS,
		Bridge:       a.cfg.Bridge,
		HostVeth:     n.veth,
		Cgroup:       n.cgroup,
		CgroupParent: a.cfg.CgroupParent,
		Quiet:        restoring,
		Log:          a.log,
		OnExit:       a.onExit(job, spec.Name),
	})
	if err != nil {
		return nil, err
	}
	n.sb = sb
	if err := a.attachLock(n); err != nil {
		_ = sb.Destroy(context.WithoutCancel(ctx))
		return nil, err
	}
	a.mu.Lock()
	a.nodes[key(job, spec.Name)] = n
	a.mu.Unlock()
	ok = true
	return n, nil
}

// attachLock attaches the (unlocked) network lock to the host end of n's veth.
func (a *Agent) attachLock(n *node) error {
	hostNet, err := a.hostNet()
	if err != nil {
		return err
	}
	defer hostNet.Close()
	n.lock, err = netquiesce.Attach(netquiesce.Target{Net: hostNet, Interface: n.veth, Cgroup: n.sb.Cgroup().Path()},
		netquiesce.Options{Logger: a.log})
	if err != nil {
		return fmt.Errorf("attach network lock to %s/%s: %w", n.job, n.spec.Name, err)
	}
	return nil
}

func (a *Agent) hostNet() (*netquiesce.Net, error) {
	if a.cfg.HostNetNS != "" {
		return netquiesce.OpenNamedNet(a.cfg.HostNetNS)
	}
	return netquiesce.OpenNamedNet("")
}

// netnsName names a job-node's network namespace uniquely on this machine,
// even with several simulated clusters: after the host's own namespace when
// there is one.
func (a *Agent) netnsName(job, n string) string {
	if a.cfg.HostNetNS != "" {
		return a.cfg.HostNetNS + "-" + job + "-" + n
	}
	return "torpor-" + a.cfg.Host + "-" + job + "-" + n
}

// vethName is a stable, short (<= 15 bytes) name for a job-node's host veth.
func vethName(job, n string) string {
	h := uint32(2166136261)
	for _, c := range []byte(job + "/" + n) {
		h = (h ^ uint32(c)) * 16777619
	}
	return fmt.Sprintf("tpv%08x", h)
}

// Start creates the job-node's sandbox and starts its command.
func (a *Agent) Start(ctx context.Context, job string, spec agentapi.NodeSpec) error {
	n, err := a.create(ctx, job, spec, false)
	if err != nil {
		return err
	}
	out := a.OutputPath(job, spec.Name)
	if err := a.jobDir(job); err != nil {
		a.destroy(ctx, n)
		return err
	}
	if err := sandbox.CreateOwned(out, userOf(spec), 0o600); err != nil {
		a.destroy(ctx, n)
		return fmt.Errorf("create the output file of %s/%s: %w", job, spec.Name, err)
	}
	argv := spec.Argv
	js, err := pmixdSpec(spec)
	if err != nil {
		a.destroy(ctx, n)
		return err
	}
	if js != nil {
		if argv, err = a.preparePMIxd(n, js); err != nil {
			a.destroy(ctx, n)
			return err
		}
	}
	if err := n.sb.Start(ctx, sandbox.Process{Argv: argv, Env: spec.Env, Dir: spec.Dir, Output: out, ExitFile: n.exitFile, User: userOf(spec)}); err != nil {
		a.destroy(ctx, n)
		return err
	}
	if err := a.saveRecord(n); err != nil {
		a.destroy(ctx, n)
		return err
	}
	a.log.Info("job-node started", "job", job, "node", spec.Name, "ip", spec.IP)
	return nil
}

// Prepare tells a job-node's pmixd that a checkpoint is coming (a job-node
// without pmixd has nobody to tell).
func (a *Agent) Prepare(ctx context.Context, ref agentapi.NodeRef, ckpt string) error {
	n, err := a.get(ref)
	if err != nil || n.link == nil {
		return err
	}
	return a.preparePMIx(ctx, n, ckpt)
}

func (a *Agent) Freeze(ctx context.Context, ref agentapi.NodeRef) error {
	n, err := a.get(ref)
	if err != nil {
		return err
	}
	// A dump follows: its CRIU starts now, while the job-nodes freeze,
	// drain and lock, unless the last thaw started it already.
	a.warmCRIU(n)
	return n.sb.Freeze(ctx)
}

// warmCRIU starts, in the background, the CRIU of n's next dump
// (criu.Worker), unless one is started or being started. CRIU's own start
// (exec and its libraries: 16-22 ms on the benchmark's VM) is then not in
// the dump's time, and a checkpoint's job stands still that much less.
func (a *Agent) warmCRIU(n *node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gone || n.criu != nil || n.warming != nil {
		return
	}
	done := make(chan struct{})
	n.warming = done
	go func() {
		defer close(done)
		w, err := n.sb.StartDumpWorker(context.Background(), a.drv)
		n.mu.Lock()
		n.warming = nil
		keep := err == nil && !n.gone
		if keep {
			n.criu = w
		}
		n.mu.Unlock()
		switch {
		case err != nil:
			a.log.Warn("could not start the next dump's CRIU ahead; the dump starts its own", "job", n.job, "node", n.spec.Name, "err", err)
		case !keep:
			w.Close()
		}
	}()
}

// awaitCRIU waits until the CRIU being started for n's next dump, if one
// is, is in n.criu; false if ctx ended first.
func (n *node) awaitCRIU(ctx context.Context) bool {
	n.mu.Lock()
	done := n.warming
	n.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// takeCRIU hands over the CRIU started ahead for n's dump, waiting for one
// being started; nil if there is none (the dump starts its own).
func (n *node) takeCRIU(ctx context.Context) *criu.Worker {
	if !n.awaitCRIU(ctx) {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	w := n.criu
	n.criu = nil
	return w
}

// dropCRIU ends n's CRIU started ahead, and stops any more from starting.
func (n *node) dropCRIU() {
	n.mu.Lock()
	n.gone = true
	done, w := n.warming, n.criu
	n.criu = nil
	n.mu.Unlock()
	if done != nil {
		<-done // it sees gone and ends its CRIU itself
	}
	w.Close()
}

// ghostLimit is the largest deleted-but-open file a dump copies into the
// images: MPI shared-memory segments are unlinked once every local rank
// mapped them, and can be many MiB.
const ghostLimit = 1 << 30

// drainSettle bounds how long Drain waits, for every connection of the
// job-node: those inside the job and those leaving it alike.
const drainSettle = 3 * time.Second

// Drain waits, at most drainSettle, until no TCP socket of the job-node has
// un-acknowledged data. A connection to another job-node of the same job (or
// within the job-node) whose bytes stay un-acknowledged for drainSettle does
// not fail the checkpoint: both ends are frozen and dumped, and CRIU saves the
// sender's queue, which is retransmitted after restore. A connection to
// anything outside the job must drain within drainSettle, or the checkpoint
// fails naming it: bytes in flight to the outside world cannot be replayed.
func (a *Agent) Drain(ctx context.Context, ref agentapi.NodeRef) (agentapi.DrainResult, error) {
	n, err := a.get(ref)
	if err != nil {
		return agentapi.DrainResult{}, err
	}
	sbNet, err := n.sb.OpenNet()
	if err != nil {
		return agentapi.DrainResult{}, err
	}
	defer sbNet.Close()
	dctx, cancel := context.WithTimeout(ctx, drainSettle)
	defer cancel()
	rep, err := netquiesce.Drain(dctx, netquiesce.DrainTarget{Net: sbNet}, netquiesce.DrainOptions{Logger: a.log})
	var te *netquiesce.DrainTimeoutError
	if errors.As(err, &te) && ctx.Err() == nil {
		inJob := jobAddrs(n.spec)
		var outside []string
		for _, s := range te.Pending {
			if !s.Remote.Addr().IsLoopback() && !inJob[s.Remote.Addr().String()] {
				outside = append(outside, s.String())
			}
		}
		if len(outside) > 0 {
			return agentapi.DrainResult{}, fmt.Errorf("drain %s/%s: connections leaving the job still have un-acknowledged data: %s", ref.Job, ref.Node, strings.Join(outside, "; "))
		}
		a.log.Warn("drain: connections inside the job still hold un-acknowledged data; CRIU saves it", "job", ref.Job, "node", ref.Node, "sockets", len(te.Pending))
		rep, err = te.Report, nil
	}
	if err != nil {
		return agentapi.DrainResult{}, err
	}
	res := agentapi.DrainResult{Sockets: len(rep.Sockets)}
	for _, s := range rep.Sockets {
		res.QueuedBytes += int64(s.SendQueue) + int64(s.RecvQueue)
	}
	return res, nil
}

// jobAddrs are the addresses of every job-node of the job, from the
// TORPOR_NODE_IPS the coordinator puts in each job-node's environment.
func jobAddrs(spec agentapi.NodeSpec) map[string]bool {
	m := map[string]bool{}
	if ip, _, ok := strings.Cut(spec.IP, "/"); ok {
		m[ip] = true
	}
	for _, e := range spec.Env {
		if v, ok := strings.CutPrefix(e, "TORPOR_NODE_IPS="); ok {
			for _, ip := range strings.Fields(v) {
				m[ip] = true
			}
		}
	}
	return m
}

func (a *Agent) Lock(_ context.Context, ref agentapi.NodeRef) error {
	n, err := a.get(ref)
	if err != nil {
		return err
	}
	_, err = n.lock.Lock()
	return err
}

func (a *Agent) Unlock(_ context.Context, ref agentapi.NodeRef) error {
	n, err := a.get(ref)
	if errors.Is(err, ErrNoNode) {
		return nil // idempotent: nothing left to unlock
	}
	if err != nil {
		return err
	}
	// Only a rollback unlocks the source of a post-copy migration: the
	// destination is gone, and the tree runs here again.
	a.stopServing(n, "the migration rolls back")
	a.dropLocalDump(n)
	if _, err := n.lock.Unlock(); err != nil {
		return err
	}
	if n.moved {
		if err := n.sb.Announce(); err != nil {
			return err
		}
		n.moved, n.restoredFrom, n.solicit = false, "", true
		if err := a.saveRecord(n); err != nil {
			a.log.Warn("job-node unlocked, but its record still says moved", "job", ref.Job, "node", ref.Node, "err", err)
		}
		// Peers already unlocked answer now; a peer still locked drops the
		// request, and thaw asks again.
		a.solicitNeighbours(n, ref, "unlock")
	}
	return nil
}

// solicitNeighbours asks for the neighbours a restored job-node's namespace
// still has unresolved: the ARP requests its restore caused were dropped by
// its lock, and the packets they hold would otherwise wait for the kernel's
// next request (retrans_time_ms, 1 s). A failure is only logged: the kernel
// still asks by itself.
func (a *Agent) solicitNeighbours(n *node, ref agentapi.NodeRef, at string) {
	asked, err := n.sb.SolicitNeighbours()
	if err != nil {
		a.log.Warn("ask for the neighbours left unresolved by the restore", "job", ref.Job, "node", ref.Node, "at", at, "err", err)
	} else if len(asked) > 0 {
		a.log.Info("asked for the neighbours left unresolved by the restore", "job", ref.Job, "node", ref.Node, "at", at, "neighbours", asked)
	}
}

func (a *Agent) Thaw(ctx context.Context, ref agentapi.NodeRef) error {
	n, err := a.get(ref)
	if errors.Is(err, ErrNoNode) {
		return nil
	}
	if err != nil {
		return err
	}
	a.stopServing(n, "the migration rolls back")
	a.dropLocalDump(n)
	if n.solicit {
		// Only now is every job-node unlocked: what the request at this
		// job-node's unlock could not resolve (a peer still locked) is
		// asked for again.
		n.solicit = false
		a.solicitNeighbours(n, ref, "thaw")
	}
	if n.sb.State() == sandbox.Frozen {
		if err := n.sb.Thaw(ctx); err != nil {
			return err
		}
	}
	if n.sb.State() == sandbox.Running {
		a.warmCRIU(n) // for the next checkpoint or migration
	}
	a.thawedStalled(n)
	if n.link != nil {
		// pmixd dropped its link at prepare; let it dial back.
		return n.link.Resume()
	}
	return nil
}

// outputMeta records a job-node's output file at dump time.
type outputMeta struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

const (
	outputMetaName = "torpor-output.json"
	outputCopyName = "torpor-output.log"
)

// Dump checkpoints the job-node's tree into req.Dir, leaving it running
// (frozen) when req.LeaveRunning says so, else letting CRIU end it and
// forgetting the job-node's record; saves its output file as it was (and an
// MPI job-node's shared files), and writes the node manifest. The coordinator
// always asks for LeaveRunning: it destroys the job-node after the commit
// when it stops a job.
func (a *Agent) Dump(ctx context.Context, ref agentapi.NodeRef, req agentapi.DumpRequest) (agentapi.DumpResult, error) {
	n, err := a.get(ref)
	if err != nil {
		return agentapi.DumpResult{}, err
	}
	switch {
	case req.Local && req.Store:
		return agentapi.DumpResult{}, fmt.Errorf("%w: dump %s/%s: a dump is for a migration (local) or a host-local checkpoint (store), not both", agentapi.ErrInvalid, ref.Job, ref.Node)
	case req.Local:
		return a.dumpLocal(ctx, n, ref, req)
	case req.Store:
		return a.dumpStored(ctx, n, ref, req)
	}
	res, err := a.dump(ctx, n, ref, req)
	if err == nil {
		a.wrote(ref, req.Checkpoint, req.Dir, req.Shared)
	}
	return res, err
}

func (a *Agent) dump(ctx context.Context, n *node, ref agentapi.NodeRef, req agentapi.DumpRequest) (agentapi.DumpResult, error) {
	pids, err := n.sb.Cgroup().Procs()
	if err != nil {
		return agentapi.DumpResult{}, err
	}
	if err := verbs.Check(pids); err != nil {
		return agentapi.DumpResult{}, fmt.Errorf("refusing to checkpoint %s/%s: %w", ref.Job, ref.Node, err)
	}
	start := time.Now()
	// The tree is frozen: the files match the images CRIU is about to write.
	var captured *appfiles.Index
	if a.cfg.NoAppFiles {
		captured = &appfiles.Index{Version: 1} // nothing captured, no index in the images
	} else if captured, err = appfiles.Capture(appfiles.CaptureOptions{
		Pids: pids, Keep: n.spec.Keep, Exclude: []string{a.cfg.RunDir}, User: filesUser(n.spec),
		Images: req.Dir, Prev: n.captured, Max: n.spec.KeepMax, Shared: req.Shared, Node: ref.Node,
	}); err != nil {
		return agentapi.DumpResult{}, fmt.Errorf("checkpoint %s/%s: the application's files: %w", ref.Job, ref.Node, err)
	}
	opts := criu.Options{
		// CRIU's log and stats go to the run directory, not among the
		// images: an aborted checkpoint's images are deleted, its log must
		// outlive them (a full disk would truncate it there, too).
		ImagesDir: req.Dir, WorkDir: filepath.Join(a.cfg.RunDir, "dump", ref.Job, ref.Node),
		LeaveRunning: req.LeaveRunning, TCPEstablished: true,
		NetworkLock: criu.NetworkLockSkip, FileLocks: true, LinkRemap: true,
		// Unlinked shared-memory segments of MPI libraries are saved whole.
		GhostLimit: ghostLimit,
	}
	var memory int64
	lazyPort := 0
	if req.PostCopyAbove > 0 {
		memory = privateMemory(pids)
		if memory >= req.PostCopyAbove {
			if lazyPort, err = freeLoopbackPort(n.sb.NetNSPath()); err != nil {
				return agentapi.DumpResult{}, fmt.Errorf("post-copy dump of %s/%s: a port for the page server: %w", ref.Job, ref.Node, err)
			}
			// The tree stays, frozen and whole, until the destination has
			// every page: a failure before then can still roll back to it.
			opts.LazyPages, opts.PageServerPort, opts.LeaveRunning = true, lazyPort, true
		}
	}
	opts.Worker = n.takeCRIU(ctx)
	defer opts.Worker.Close() // unless the dump took it
	w := a.watchDump(ref)
	if w != nil {
		w.arm(&opts)
	}
	// CRIU's memory pages, nearly all of the bytes, are hashed as CRIU
	// writes them, and the application's files just captured meanwhile: the
	// node manifest then reads only the small images again.
	captureTime := time.Since(start)
	codec, err := catalog.ParseCodec(req.Compress)
	if err != nil {
		return agentapi.DumpResult{}, fmt.Errorf("%w: checkpoint %s/%s: %w", agentapi.ErrInvalid, ref.Job, ref.Node, err)
	}
	// With a codec they are stored compressed, also as CRIU writes them.
	hasher := catalog.StartStreamCompressor(req.Dir, criu.IsPages, codec)
	defer hasher.Stop()
	if req.Local && codec == "" && !opts.LazyPages {
		n.mu.Lock()
		n.localHasher = hasher
		n.mu.Unlock()
		defer func() {
			n.mu.Lock()
			n.localHasher = nil
			n.mu.Unlock()
		}()
	}
	res, err := n.sb.Dump(ctx, a.drv, opts)
	criuDone := time.Now()
	if w != nil {
		w.finish()
	}
	if err != nil {
		// A CRIU that died mid-dump leaves the tree's connections in TCP
		// repair mode; the rollback's thaw would find them stalled.
		if k, rerr := n.sb.ReleaseTCPRepair(); rerr != nil {
			a.log.Error("after a failed dump", "job", ref.Job, "node", ref.Node, "err", rerr)
		} else if k > 0 {
			a.log.Warn("the failed dump left TCP connections in repair mode; released them", "job", ref.Job, "node", ref.Node, "sockets", k)
		}
		return agentapi.DumpResult{}, fmt.Errorf("criu dump of %s/%s: %w", ref.Job, ref.Node, err)
	}
	var ps *pageServer
	if res.Serving != nil {
		if ps, err = a.servePages(n, res.Serving, lazyPort); err != nil {
			res.Serving.Stop()
			return agentapi.DumpResult{}, fmt.Errorf("post-copy dump of %s/%s: %w", ref.Job, ref.Node, err)
		}
		n.mu.Lock()
		n.pages = ps
		n.mu.Unlock()
		// From here until Destroy, a shim that adopts the job-node destroys it.
		if err := a.saveRecord(n); err != nil {
			a.stopServing(n, "its record could not be written")
			return agentapi.DumpResult{}, err
		}
	}
	fail := func(err error) (agentapi.DumpResult, error) {
		a.stopServing(n, "the dump failed")
		return agentapi.DumpResult{}, err
	}
	n.captured = captured
	if !req.LeaveRunning && ps == nil {
		a.removeRecord(ref.Job, ref.Node) // the tree is gone
	}
	if err := saveOutput(a.OutputPath(ref.Job, ref.Node), req.Dir); err != nil {
		return fail(err)
	}
	if n.link != nil {
		if err := saveFiles(req.Dir, a.sharedDirs(ref.Job, ref.Node)); err != nil {
			return fail(err)
		}
	}
	saved := time.Now()
	sums, err := hasher.Finish(ctx)
	if err != nil {
		return fail(err)
	}
	hashed := time.Now()
	nm, err := catalog.WriteNodeManifestWith(ctx, req.Dir, sums)
	if err != nil {
		return fail(err)
	}
	// Where the time after CRIU went: the output and shared files' copies,
	// the wait for the hashing of the images CRIU wrote, the node manifest
	// (which hashes the files hashed nowhere else).
	a.log.Info("job-node dumped", "job", ref.Job, "node", ref.Node, "ckpt", req.Checkpoint, "bytes", nm.TotalBytes, "criu", res.Elapsed,
		"capture_time", captureTime, "save_time", saved.Sub(criuDone), "hash_wait", hashed.Sub(saved), "manifest_time", time.Since(hashed), "hashed_streaming", len(sums),
		"app_files", len(captured.Entries), "app_bytes", captured.Bytes, "compress", req.Compress, "memory", memory, "post_copy", ps != nil)
	out := agentapi.DumpResult{Bytes: nm.TotalBytes, Files: len(nm.Files), CRIUTime: res.Elapsed, Memory: memory}
	if ps != nil {
		out.PageServer = ps.addr
	}
	return out, nil
}

// saveOutput keeps the output file's size and content at dump time. CRIU
// restores an open file only at the size it had when dumped; the output
// written after the checkpoint belongs to a future the restart replays.
func saveOutput(path, dir string) error {
	src, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("save job-node output: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(filepath.Join(dir, outputCopyName), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("save job-node output: %w", err)
	}
	if _, err := io.CopyN(dst, src, st.Size()); err != nil {
		dst.Close()
		return fmt.Errorf("save job-node output: %w", err)
	}
	if err := dst.Close(); err != nil {
		return err
	}
	meta, _ := json.Marshal(outputMeta{Path: path, Size: st.Size()})
	return os.WriteFile(filepath.Join(dir, outputMetaName), meta, 0o600)
}

// restoreOutput puts the output file back as it was at dump time.
func restoreOutput(dir, path string, u *sandbox.User) error {
	data, err := os.ReadFile(filepath.Join(dir, outputMetaName))
	if err != nil {
		return fmt.Errorf("read output record of the checkpoint: %w", err)
	}
	var m outputMeta
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("parse output record of the checkpoint: %w", err)
	}
	if m.Path != path {
		return fmt.Errorf("the checkpoint's output record names %s, not this job-node's output %s: refusing to write there", m.Path, path)
	}
	src, err := os.Open(filepath.Join(dir, outputCopyName))
	if err != nil {
		return err
	}
	defer src.Close()
	// Already as it was (a migration, whose job has been frozen since the
	// dump): kept, not replaced. Where hosts share the run directory the
	// job-node being moved still writes to that file, and does again if
	// the migration is rolled back.
	if same, err := sameFile(m.Path, src, m.Size); err == nil && same {
		return nil
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	// In the job's run directory, which only root may change: the owner
	// can plant nothing at tmp.
	tmp := m.Path + ".restore"
	dst, err := sandbox.OpenOwned(tmp, u, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(dst, src, m.Size); err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("restore job-node output: %w", err)
	}
	if err := dst.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, m.Path)
}

// sameFile says whether path is a regular file of exactly size bytes, the
// first size bytes of r.
func sameFile(path string, r io.Reader, size int64) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() != size {
		return false, err
	}
	a, b := make([]byte, 64<<10), make([]byte, 64<<10)
	for left := size; left > 0; {
		k := int64(len(a))
		if left < k {
			k = left
		}
		if _, err := io.ReadFull(f, a[:k]); err != nil {
			return false, err
		}
		if _, err := io.ReadFull(r, b[:k]); err != nil {
			return false, err
		}
		if !bytes.Equal(a[:k], b[:k]) {
			return false, nil
		}
		left -= k
	}
	return true, nil
}

// RestoreFiles puts the application's files back as they were at the
// checkpoint in req.Dir, as the job's owner (package appfiles). The
// coordinator calls it on every job-node of the job before it restores any:
// a file several job-nodes hold (one written by every rank) is then back
// before a task opens it again.
func (a *Agent) RestoreFiles(ctx context.Context, job string, spec agentapi.NodeSpec, req agentapi.RestoreRequest) (_ agentapi.RestoreFilesResult, err error) {
	if err := ctx.Err(); err != nil {
		return agentapi.RestoreFilesResult{}, err
	}
	if err := checkNames(job, spec.Name); err != nil {
		return agentapi.RestoreFilesResult{}, err
	}
	if req.Stored {
		if req.Dir, err = a.storeDir(req.Checkpoint, spec.Name); err != nil {
			return agentapi.RestoreFilesResult{}, err
		}
		defer a.setAsideOnCorrupt(req.Checkpoint, spec.Name, &err)
	}
	if req.Dir == "" || req.Checkpoint == "" {
		return agentapi.RestoreFilesResult{}, fmt.Errorf("%w: restore the files of %s/%s: needs the images' directory and the checkpoint's handle", agentapi.ErrInvalid, job, spec.Name)
	}
	if req.NodeManifestSHA256 != "" {
		// The capture's index says where files go and N.data what goes
		// there: both are checked against the node manifest first.
		imgs, err := catalog.OpenNodeImages(req.Dir, req.NodeManifestSHA256)
		if err == nil {
			err = imgs.Verify(ctx, func(name string) bool { return strings.HasPrefix(name, appfiles.DirName+"/") })
			imgs.Close()
		}
		if err != nil {
			return agentapi.RestoreFilesResult{}, fmt.Errorf("refusing to restore the files of %s/%s from %s: %w", job, spec.Name, req.Checkpoint, corrupt(err))
		}
	}
	_, seq, _ := strings.Cut(req.Checkpoint, "/")
	_, moved, err := appfiles.Restore(appfiles.RestoreOptions{Images: req.Dir, User: filesUser(spec), Seq: seq})
	if err != nil {
		return agentapi.RestoreFilesResult{Moved: moved}, fmt.Errorf("restore %s/%s from %s: the application's files: %w", job, spec.Name, req.Checkpoint, err)
	}
	for _, m := range moved {
		a.log.Warn("a file that came after the checkpoint was moved aside", "job", job, "node", spec.Name, "ckpt", req.Checkpoint, "file", m)
	}
	return agentapi.RestoreFilesResult{Moved: moved}, nil
}

// madeNode is a.create's result, from another goroutine.
type madeNode struct {
	n   *node
	err error
}

// Restore creates a sandbox for the job-node on this host with its network
// locked, then restores the tree into it. It stays locked until Unlock.
//
// If ctx ends before Restore succeeds (the coordinator's deadline passed or
// its connection was cut), the half-restored job-node is destroyed, even if
// CRIU had finished, and the error wraps ctx.Err(): the coordinator, which
// gave up on it, will not know it is there.
func (a *Agent) Restore(ctx context.Context, job string, spec agentapi.NodeSpec, req agentapi.RestoreRequest) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("restore %s/%s: %w", job, spec.Name, err)
	}
	// A copy already here is refused before anything else runs (images
	// fetched, a lazy-pages daemon started), so the coordinator can destroy
	// it and ask again with nothing consumed.
	a.mu.Lock()
	err = a.existsLocked(job, spec.Name)
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if req.Stored {
		if req.From != "" || req.NodeManifestSHA256 == "" {
			return fmt.Errorf("%w: restore %s/%s from this shim's checkpoint store: needs the node manifest's SHA-256 and no source shim (fetch first)", agentapi.ErrInvalid, job, spec.Name)
		}
		if req.Dir, err = a.storeDir(req.Checkpoint, spec.Name); err != nil {
			return err
		}
		// Runs last, once every half-restored part is gone.
		defer a.setAsideOnCorrupt(req.Checkpoint, spec.Name, &err)
	}
	switch {
	case req.From != "" && req.Checkpoint == "":
		return fmt.Errorf("%w: restore %s/%s from the images of another shim needs the checkpoint's handle", agentapi.ErrInvalid, job, spec.Name)
	case req.From == "" && (req.Dir == "" || req.Checkpoint == ""):
		return fmt.Errorf("%w: restore %s/%s needs the images' directory and the checkpoint's handle", agentapi.ErrInvalid, job, spec.Name)
	}
	// The sandbox (network namespace, veth, cgroup: 7-30 ms here) is made
	// while the images arrive and are checked: it needs none of them, and
	// the job-node is down until the restore (a stop-copy migration) or
	// the job waits for it (a restart). It only ever holds a tree CRIU
	// restores below, after every check.
	early := make(chan madeNode, 1)
	go func() {
		n, err := a.create(ctx, job, spec, true)
		early <- madeNode{n, err}
	}()
	defer func() {
		if early == nil {
			return // taken below, and destroyed there on failure
		}
		if m := <-early; m.n != nil {
			if derr := a.destroy(context.WithoutCancel(ctx), m.n); derr != nil {
				a.log.Warn("destroy the job-node of a failed restore", "job", job, "node", spec.Name, "err", derr)
			}
		}
	}()
	if req.From != "" {
		var sum string
		if req.Dir, sum, err = a.fetchImages(ctx, job, spec.Name, req.Checkpoint, req.From); err != nil {
			return err
		}
		// Read by CRIU only during the restore, but by a post-copy's
		// lazy-pages daemon until every page arrived: those (no memory
		// images in them) stay until the job-node leaves (destroy).
		defer func() {
			if err != nil || req.PageServer == "" {
				os.RemoveAll(req.Dir)
			}
		}()
		if req.NodeManifestSHA256 != "" && req.NodeManifestSHA256 != sum {
			return fmt.Errorf("%w: restore %s/%s: the images from %s are of node manifest %s, not %s", catalog.ErrCorrupt, job, spec.Name, req.From, sum, req.NodeManifestSHA256)
		}
		req.NodeManifestSHA256 = sum
	}
	if req.Dir == "" || req.Checkpoint == "" {
		return fmt.Errorf("%w: restore %s/%s needs the images' directory and the checkpoint's handle", agentapi.ErrInvalid, job, spec.Name)
	}
	dir := req.Dir
	start := time.Now()
	work := filepath.Join(a.cfg.RunDir, "restore", job, spec.Name)
	var pull *pendingPull
	if req.PageServer != "" {
		// Post-copy: CRIU's lazy-pages daemon (~50 ms to be ready: it
		// probes the kernel and reads the tree's images) starts while the
		// sandbox is made; it must listen before CRIU restores through it.
		pull = a.startPullAsync(ctx, job, spec.Name, req.PageServer, dir, work)
		defer func() {
			if err == nil {
				return
			}
			// Runs last: the tree (killed by the destroy of a failed
			// restore) goes before its daemon, without which it would
			// read zeros.
			if lp, _ := pull.wait(); lp != nil {
				lp.Kill()
			}
		}()
	}
	// A restart's images are verified here, against the node manifest the
	// signed job manifest names, while the sandbox is made: everything but
	// the tasks' memory before anything acts on it, the memory (pages-*.img,
	// nearly all the bytes) also while CRIU restores. CRIU waits at its
	// post-restore notification, the tree restored and stopped, until the
	// memory is verified too: a mismatch fails the notification, CRIU kills
	// the tree it made, and none of its tasks ever runs.
	var imgs *catalog.NodeImages
	var pages *pagesCheck
	var scratch string // CRIU's images directory when memory images are stored compressed
	if req.NodeManifestSHA256 != "" {
		if imgs, err = catalog.OpenNodeImages(dir, req.NodeManifestSHA256); err != nil {
			return fmt.Errorf("refusing to restore %s/%s from %s: %w", job, spec.Name, req.Checkpoint, corrupt(err))
		}
		defer imgs.Close()
		if len(imgs.Compressed()) > 0 {
			if scratch, err = a.scratchDir(job, spec.Name); err != nil {
				return err
			}
			defer a.removeScratch(scratch)
		}
		if pages, err = startPagesCheck(ctx, imgs, scratch); err != nil {
			return err
		}
		defer pages.stop()
	}
	if imgs != nil {
		if err := imgs.Verify(ctx, func(name string) bool { return !criu.IsPages(name) && !imgs.IsCompressed(name) }); err != nil {
			return fmt.Errorf("refusing to restore %s/%s from %s: %w", job, spec.Name, req.Checkpoint, corrupt(err))
		}
	}
	if err := checkImageCreds(dir, imgs, spec); err != nil {
		return fmt.Errorf("refusing to restore %s/%s from %s: %w", job, spec.Name, dir, err)
	}
	// The memory of a restore that is no post-copy's is filled by a local
	// lazy-pages daemon when it is large (lazyfill.go). It starts (reading
	// the tree's images) once they are verified, while the rest is made.
	var fill *pendingPull
	if pull == nil && scratch == "" && a.fillLazily(ctx, dir, imgs) {
		fill = a.startFillAsync(ctx, dir, work)
		defer func() {
			if err == nil {
				return // it filled every page and exited
			}
			// Runs after the tree is killed (below), as for post-copy.
			if lp, _ := fill.wait(); lp != nil {
				lp.Kill()
			}
		}()
	}
	// What RestoreFiles put back is the next capture's starting point.
	captured, err := appfiles.ReadIndex(dir)
	if err != nil {
		return fmt.Errorf("restore %s/%s from %s: %w", job, spec.Name, dir, err)
	}
	m := <-early
	early = nil
	n, err := m.n, m.err
	if err != nil {
		return err
	}
	created := time.Now()
	defer func() {
		if err == nil {
			return
		}
		if derr := a.destroy(ctx, n); derr != nil {
			a.log.Warn("destroy the job-node of a failed restore", "job", job, "node", spec.Name, "err", derr)
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("restore %s/%s: %w; the half-restored job-node was destroyed (%v)", job, spec.Name, ctx.Err(), err)
		}
	}()
	n.captured = captured
	if _, err := n.lock.Lock(); err != nil {
		return err
	}
	if err := a.jobDir(job); err != nil {
		return err
	}
	if err := restoreOutput(dir, a.OutputPath(job, spec.Name), userOf(spec)); err != nil {
		return err
	}
	// The restored init writes its status at exit, in place (as at start).
	if err := sandbox.CreateOwned(n.exitFile, userOf(spec), 0o600); err != nil {
		return fmt.Errorf("restore %s/%s: create exit status file: %w", job, spec.Name, err)
	}
	if js, err := pmixdSpec(spec); err != nil || js != nil {
		if err == nil {
			err = restoreFiles(dir, a.sharedDirs(job, spec.Name), userOf(spec))
		}
		if err == nil {
			err = a.listenLink(n)
		}
		if err != nil {
			return err
		}
		n.restoredFrom = req.Checkpoint
		n.link.SetRestoredFrom(n.restoredFrom)
	}
	imagesDir := dir
	if scratch != "" {
		// CRIU needs the raw memory images before it starts.
		if err := pages.wait(ctx); err != nil {
			return fmt.Errorf("refusing to restore %s/%s from %s: %w", job, spec.Name, req.Checkpoint, corrupt(err))
		}
		if err := linkImages(dir, scratch, imgs); err != nil {
			return fmt.Errorf("restore %s/%s: %w", job, spec.Name, err)
		}
		imagesDir = scratch
	}
	opts := criu.Options{
		ImagesDir: imagesDir, WorkDir: work,
		TCPEstablished: true, NetworkLock: criu.NetworkLockSkip, FileLocks: true, LinkRemap: true,
	}
	if a.criuStarted != nil {
		opts.Started = func(pid int) { a.criuStarted("restore", pid) }
	}
	var lp *criu.LazyPages
	if pull != nil {
		if lp, err = pull.wait(); err != nil {
			return fmt.Errorf("restore %s/%s with post-copy: %w", job, spec.Name, err)
		}
		opts.LazyPages = true
	}
	var filler *criu.LazyPages
	if fill != nil {
		var ferr error
		if filler, ferr = fill.wait(); ferr != nil {
			a.log.Warn("the lazy-pages daemon that would fill the restored memory did not start; CRIU restores it itself", "job", job, "node", spec.Name, "err", ferr)
		} else {
			opts.LazyPages = true
		}
	}
	if opts.LazyPages {
		defer func() {
			if err != nil {
				// The tree first: without its daemon (post-copy's or the
				// fill's, killed by a defer above, which runs after this
				// one) it would read zeros.
				_ = n.sb.Cgroup().Kill(context.WithoutCancel(ctx))
			}
		}()
	}
	hooks := a.criuEvent != nil || a.cfg.Faults.Has(fault.HoldInRestore)
	stall := lp != nil && pull.stall != nil
	if hooks || pages != nil || stall {
		opts.Notify = func(ev criu.Event) error {
			if ev == criu.EventPostRestore && pages != nil {
				if err := pages.wait(ctx); err != nil {
					return fmt.Errorf("the restored tree's memory fails verification, CRIU kills it: %w", corrupt(err))
				}
			}
			if ev == criu.EventPostRestore && stall {
				// CRIU tells its daemon the restore is over, and the
				// daemon starts fetching every page, just after this.
				pull.stall.hold()
				n.mu.Lock()
				n.stalled = true
				n.mu.Unlock()
			}
			if !hooks {
				return nil
			}
			return a.restoreEvent(ctx, agentapi.NodeRef{Job: job, Node: spec.Name}, ev)
		}
	}
	criuStart := time.Now()
	rctx, stop := ctx, func() {}
	if filler != nil {
		// CRIU waits for a daemon that died without a word: end it too.
		rctx, stop = endWithDaemon(ctx, filler)
	}
	rres, err := n.sb.Restore(rctx, a.drv, opts) // a cancel's cause is in err
	stop()
	if err != nil {
		return err
	}
	if pages != nil && !pages.passed() {
		// CRIU resumed the tree without asking at post-restore: never
		// expected, and the tree is destroyed.
		return fmt.Errorf("restore %s/%s: CRIU finished without its post-restore notification, so the memory images were not verified before the tree ran; destroyed it", job, spec.Name)
	}
	criuDone := time.Now()
	if filler != nil {
		// The restore is complete only with all its memory. The tree
		// waits frozen until the daemon has filled every page (into the
		// frozen tree): a task that faulted on a page a dying daemon never
		// filled would read zeros. (Not frozen from within CRIU's restore:
		// at post-restore or post-resume, CRIU then waits for the tree
		// forever.)
		if err := n.sb.Cgroup().SetFreeze(true); err != nil {
			return fmt.Errorf("restore %s/%s: freeze the tree until its memory is filled: %w", job, spec.Name, err)
		}
		if a.filling != nil {
			a.filling(filler.Pid())
		}
		select {
		case <-filler.Done():
		case <-ctx.Done():
			return fmt.Errorf("restore %s/%s: %w", job, spec.Name, ctx.Err())
		}
		if err := filler.Err(); err != nil {
			return fmt.Errorf("restore %s/%s: the lazy-pages daemon filling its memory failed, so the restored tree is destroyed: %w", job, spec.Name, err)
		}
		if err := n.sb.Cgroup().Thaw(ctx); err != nil {
			return fmt.Errorf("restore %s/%s: thaw the tree once its memory was filled: %w", job, spec.Name, err)
		}
	}
	filled := time.Now()
	if a.afterRestore != nil {
		a.afterRestore()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n.moved = true
	if lp != nil {
		n.mu.Lock()
		n.pull, n.pulling = a.watchPull(n, lp), true
		n.mu.Unlock()
	}
	if err := a.saveRecord(n); err != nil {
		return err
	}
	a.cfg.Metrics.CRIU("restore", rres.Elapsed)
	a.cfg.Metrics.Read(imagesBytes(dir))
	a.log.Info("job-node restored", "job", job, "node", spec.Name, "ckpt", req.Checkpoint, "from", dir,
		"prepare_time", criuStart.Sub(start), "sandbox_time", created.Sub(start), "criu", criuDone.Sub(criuStart), "verify_wait", pages.waited(),
		"filled_lazily", filler != nil, "fill_wait", filled.Sub(criuDone), "post_copy_from", req.PageServer)
	return nil
}

func (a *Agent) Destroy(ctx context.Context, ref agentapi.NodeRef) error {
	n, err := a.get(ref)
	if errors.Is(err, ErrNoNode) {
		return nil
	}
	if err != nil {
		return err
	}
	return a.destroy(ctx, n)
}

func (a *Agent) destroy(ctx context.Context, n *node) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	n.mu.Lock()
	// A locked job-node's address may live on elsewhere: the old copy of
	// a migration (post-copy or not) is destroyed while its new copy and
	// the peers run. Its tree dies while the lock still drops what its
	// sockets send as they close (stale sequence numbers a peer takes for
	// a reset of the live connection); the lock goes with the veth.
	stale := n.pages != nil || (n.lock != nil && n.lock.Locked())
	n.mu.Unlock()
	a.stopServing(n, "the job-node is destroyed")
	n.dropCRIU()
	if n.link != nil {
		n.link.Close()
	}
	if stale {
		errs = append(errs, n.sb.Destroy(ctx))
	}
	if n.lock != nil {
		errs = append(errs, n.lock.Close())
	}
	errs = append(errs, n.sb.Destroy(ctx))
	n.mu.Lock()
	pull := n.pull
	n.mu.Unlock()
	if pull != nil {
		// Its tasks are gone: the daemon has nothing left to fill.
		pull.lp.Kill()
	}
	a.removeRecord(n.job, n.spec.Name)
	a.dropMigrationImages(n.job, n.spec.Name)
	a.mu.Lock()
	if a.nodes[key(n.job, n.spec.Name)] == n {
		delete(a.nodes, key(n.job, n.spec.Name))
	}
	a.mu.Unlock()
	return errors.Join(errs...)
}

func (a *Agent) Status(_ context.Context, ref agentapi.NodeRef) (agentapi.NodeStatus, error) {
	n, err := a.get(ref)
	if err != nil {
		return agentapi.NodeStatus{}, err
	}
	switch n.sb.State() {
	case sandbox.Running, sandbox.Frozen:
		return agentapi.NodeStatus{Running: true}, nil
	case sandbox.Exited:
		code := exitCode(n.sb.ExitErr())
		msg := ""
		if e := n.sb.ExitErr(); e != nil {
			msg = e.Error()
		}
		return agentapi.NodeStatus{Exited: true, ExitCode: code, Message: msg}, nil
	}
	return agentapi.NodeStatus{}, nil
}

// exitCode turns the sandbox init's end (an *exec.ExitError for a started
// tree, a *sandbox.InitExit for a restored one) into an exit code.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		if c := ec.ExitCode(); c >= 0 {
			return c
		}
	}
	return 1
}

// JobNodes lists the job-nodes this shim holds, those being created but
// for: what it tells the coordinator as it registers, which destroys the
// copies its registry says must not be here.
func (a *Agent) JobNodes() []agentapi.NodeRef {
	a.mu.Lock()
	defer a.mu.Unlock()
	refs := make([]agentapi.NodeRef, 0, len(a.nodes))
	for _, n := range a.nodes {
		if n != nil {
			refs = append(refs, agentapi.NodeRef{Job: n.job, Node: n.spec.Name})
		}
	}
	return refs
}

// Close destroys every job-node of this host (shim shutdown).
func (a *Agent) Close(ctx context.Context) error {
	a.mu.Lock()
	var all []*node
	for _, n := range a.nodes {
		if n != nil {
			all = append(all, n)
		}
	}
	a.mu.Unlock()
	var errs []error
	for _, n := range all {
		errs = append(errs, a.destroy(ctx, n))
	}
	return errors.Join(errs...)
}

// imagesBytes is the size of the regular files below a job-node's images
// directory but its node manifest, as the node manifest counts them: what a
// restore reads (metrics only; 0 if it cannot be walked).
func imagesBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || p == filepath.Join(dir, catalog.NodeManifestName) {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += info.Size()
		}
		return nil
	})
	return n
}
