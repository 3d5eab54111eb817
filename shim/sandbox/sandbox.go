// Package sandbox is a job-node's sandbox on one host: a network namespace
// with a veth to the host's bridge and the job-node's floating IPv4 address, a
// PID and UTS namespace whose PID 1 is torpor's small init, and a cgroup v2
// leaf. No mount namespace: CRIU then has no mounts to dump.
//
// Life: New (Created) → Start or Restore (Running) ⇄ Freeze/Thaw (Frozen) →
// Dump with stop (Dumped) → Restore (Running) … → Destroy. Illegal moves
// return a *TransitionError.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/cgroup"
)

// IfName is the sandbox's interface.
const IfName = "eth0"

// DefaultCgroupParent is where sandbox cgroups live below the cgroup2 mount:
// the shim puts a job-node's at <mount>/torpor/<host>/<job>/<node>.
const DefaultCgroupParent = "/torpor"

// Config describes one sandbox.
type Config struct {
	// Name identifies the sandbox in logs and errors ("job1/n0").
	Name string
	// NetNS is the name of the sandbox's network namespace under /run/netns.
	// It must be unique on the machine and start with "torpor".
	NetNS string
	// Hostname of the job-node (its own UTS namespace).
	Hostname string
	// Address is the floating address with prefix, e.g. "198.19.0.1/15".
	// The interface's MAC is derived from it (netquiesce.MACForIP), so it is
	// the same on every host.
	Address string
	// HostNetNS names the host's network namespace (a simulated host), or is
	// empty for the caller's own.
	HostNetNS string
	// Bridge is the bridge in the host namespace the sandbox's veth joins.
	Bridge string
	// HostVeth names the host end of the veth; default "tpv" + 8 random hex.
	HostVeth string
	// CgroupMount is the cgroup2 mountpoint; empty: found from mountinfo.
	CgroupMount string
	// Cgroup is the leaf below the mount, e.g. "/torpor/job1/n0".
	Cgroup string
	// CgroupParent is the shim's directory of sandbox cgroups (default
	// DefaultCgroupParent): Destroy removes the leaf's parents that it
	// leaves empty, up to the first directory of this path below the
	// mount, which stays ("/torpor" for "/torpor/cluster1").
	CgroupParent string
	// Locked creates the sandbox with its interface down (LockNetwork's lock
	// held): a restore target must not answer its peers before its sockets
	// exist, or they would get RSTs. The shim leaves it false and engages its
	// eBPF lock instead (shim/agent Restore).
	Locked bool
	// Quiet creates the sandbox without announcing its address (gratuitous
	// ARP): a restore target, whose announcement comes at its unlock. Its
	// address still lives on elsewhere until then (a migration's source):
	// announced now, peers would send the source's traffic here, and on
	// here if the migration were rolled back.
	Quiet bool
	// Log receives the sandbox's events; nil discards them.
	Log *slog.Logger
	// OnExit, if set, is called (from a goroutine of its own, without the
	// sandbox's locks) each time the tree exits by itself: not when
	// Destroy or a dump ends it.
	OnExit func()
}

// Process is the command the init starts.
type Process struct {
	Argv []string
	Env  []string // nil: none
	Dir  string
	// Output receives the command's stdout and stderr. It is opened by the
	// init and stays open in the tree: it must exist at the same path when the
	// tree is restored, and must not change size in between.
	Output string
	// InitOutput receives the init's own stdout and stderr; "" is /dev/null.
	InitOutput string
	// ExitFile, if set, is where the init writes its exit status (a decimal
	// line) just before it exits, so that a shim which adopted the job-node
	// (see Adopt) can report it. Like Output, it must be at the same path on
	// every host: a restored init writes it where the started one would.
	// Start replaces a stale one with an empty file owned by User.
	ExitFile string
	// User is who the tree runs as (nil: root, as the shim).
	User *User
}

// User is who a sandbox's tree runs as: a uid, a primary gid and
// supplementary groups, without capabilities and with no_new_privs.
type User struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
}

// Root reports whether u is root (nil is).
func (u *User) Root() bool { return u == nil || u.UID == 0 }

// IDs are u's uid and gid, 0 and 0 for root.
func (u *User) IDs() (int, int) {
	if u == nil {
		return 0, 0
	}
	return u.UID, u.GID
}

// OpenOwned creates path anew (removing what was there, without following
// a symbolic link) as an empty regular file owned by u, mode perm, and
// returns it open for writing. Its directory must be one that only root may
// change.
func OpenOwned(path string, u *User, perm os.FileMode) (*os.File, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, perm)
	if err != nil {
		return nil, err
	}
	uid, gid := u.IDs()
	if err := f.Chown(uid, gid); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CreateOwned is OpenOwned, closed.
func CreateOwned(path string, u *User, perm os.FileMode) error {
	f, err := OpenOwned(path, u, perm)
	if err != nil {
		return err
	}
	return f.Close()
}

// Sandbox is one job-node's sandbox.
type Sandbox struct {
	cfg  Config
	log  *slog.Logger
	ip   net.IP
	cg   *cgroup.Group
	host *netquiesce.Net
	sb   *netquiesce.Net

	opMu sync.Mutex // one operation at a time

	mu       sync.Mutex
	state    State
	tree     *tree
	locked   bool
	exitErr  error
	expectKO bool  // a stop dump is about to kill the tree
	killing  *tree // the tree killTree or teardown kills: its end is no exit of its own
}

// tree is the running process tree, known by its init.
type tree struct {
	pid  int
	done chan struct{}
	err  error // exit status of the init
}

// New creates the sandbox's namespace, veth, address and cgroup. On error
// nothing is left behind.
func New(ctx context.Context, cfg Config) (_ *Sandbox, err error) {
	if cfg.NetNS == "" || cfg.Address == "" || cfg.Bridge == "" || cfg.Cgroup == "" {
		return nil, fmt.Errorf("create sandbox %s: NetNS, Address, Bridge and Cgroup are required", cfg.Name)
	}
	ip, _, err := net.ParseCIDR(cfg.Address)
	if err != nil || ip.To4() == nil {
		return nil, fmt.Errorf("create sandbox %s: address %q is not an IPv4 CIDR", cfg.Name, cfg.Address)
	}
	if cfg.HostVeth == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.HostVeth = "tpv" + hex.EncodeToString(b[:])
	}
	if cfg.CgroupMount == "" {
		if cfg.CgroupMount, err = cgroup.Mountpoint(); err != nil {
			return nil, fmt.Errorf("create sandbox %s: %w", cfg.Name, err)
		}
	}
	s := &Sandbox{cfg: cfg, ip: ip.To4(), log: cfg.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("sandbox", cfg.Name)
	defer func() {
		if err != nil {
			s.teardown(context.WithoutCancel(ctx))
			err = fmt.Errorf("create sandbox %s: %w", cfg.Name, err)
		}
	}()
	if s.cg, err = cgroup.Create(cfg.CgroupMount, cfg.Cgroup); err != nil {
		return nil, err
	}
	if err = s.setupNet(); err != nil {
		return nil, err
	}
	s.state = Created
	s.log.Debug("sandbox created", "netns", cfg.NetNS, "address", cfg.Address, "cgroup", s.cg.Rel())
	return s, nil
}

func (s *Sandbox) setupNet() error {
	var err error
	if s.cfg.HostNetNS != "" {
		s.host, err = netquiesce.OpenNamedNet(s.cfg.HostNetNS)
	} else {
		s.host, err = openSelfNet()
	}
	if err != nil {
		return err
	}
	ns, err := netquiesce.NewNamedNetns(s.cfg.NetNS)
	if err != nil {
		return err
	}
	s.sb, err = netquiesce.OpenNet(ns)
	ns.Close()
	if err != nil {
		return err
	}
	if err := s.sb.DisableIPv6(); err != nil {
		return err
	}
	if err := s.sb.LinkUp("lo"); err != nil {
		return err
	}
	err = netquiesce.AddVeth(
		netquiesce.VethEnd{Net: s.host, Name: s.cfg.HostVeth},
		netquiesce.VethEnd{Net: s.sb, Name: IfName, MAC: netquiesce.MACForIP(s.ip)})
	if err != nil {
		return err
	}
	if err := s.host.SetMaster(s.cfg.HostVeth, s.cfg.Bridge); err != nil {
		return err
	}
	if s.cfg.Locked {
		if err := s.setLink(false); err != nil {
			return err
		}
		s.locked = true
	}
	if err := s.sb.AddAddr(IfName, s.cfg.Address); err != nil {
		return err
	}
	if !s.locked && !s.cfg.Quiet {
		return netquiesce.AnnounceIP(s.sb.NS(), IfName, s.ip)
	}
	return nil
}

func openSelfNet() (*netquiesce.Net, error) {
	return nil, errors.New("sandboxes in the shim's own network namespace are not supported yet: set HostNetNS")
}

// setLink sets the host end of the veth up or down. Down, the sandbox's eth0
// loses its carrier but keeps its routes: CRIU can still restore connected
// sockets (TCP repair connects need a route), and nothing crosses the wire.
func (s *Sandbox) setLink(up bool) error {
	l, err := s.host.Link(s.cfg.HostVeth)
	if err != nil {
		return err
	}
	if up {
		err = s.host.Handle().LinkSetUp(l)
	} else {
		err = s.host.Handle().LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("set %s up=%v in %s: %w", s.cfg.HostVeth, up, s.cfg.HostNetNS, err)
	}
	return nil
}

// Name is the sandbox's name.
func (s *Sandbox) Name() string { return s.cfg.Name }

// IP is the floating address.
func (s *Sandbox) IP() net.IP { return s.ip }

// NetNSPath is the sandbox's network namespace file.
func (s *Sandbox) NetNSPath() string { return filepath.Join(netquiesce.NetnsDir, s.cfg.NetNS) }

// OpenNet opens a handle of its own on the sandbox's network namespace; the
// caller closes it.
func (s *Sandbox) OpenNet() (*netquiesce.Net, error) { return netquiesce.OpenNamedNet(s.cfg.NetNS) }

// Cgroup is the sandbox's cgroup leaf.
func (s *Sandbox) Cgroup() *cgroup.Group { return s.cg }

// State is the current state.
func (s *Sandbox) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Pid is the init's PID in the shim's PID namespace (0 when none).
func (s *Sandbox) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tree == nil {
		return 0
	}
	return s.tree.pid
}

// ExitErr is how the tree ended when the state is Exited.
func (s *Sandbox) ExitErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exitErr
}

// begin takes the operation lock and checks the transition.
func (s *Sandbox) begin(op string) (State, error) {
	s.opMu.Lock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := check(s.cfg.Name, op, s.state); err != nil {
		s.opMu.Unlock()
		return s.state, err
	}
	return s.state, nil
}

func (s *Sandbox) end() { s.opMu.Unlock() }

func (s *Sandbox) setState(st State) {
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
}

// watch records the tree's end.
func (s *Sandbox) watch(t *tree, wait func() error) {
	go func() {
		t.err = wait()
		close(t.done)
		s.mu.Lock()
		exited := s.tree == t && (s.state == Running || s.state == Frozen) && !s.expectKO && s.killing != t
		if exited {
			s.state = Exited
			s.exitErr = t.err
			s.log.Info("sandbox tree exited", "err", t.err)
		}
		s.mu.Unlock()
		if exited && s.cfg.OnExit != nil {
			s.cfg.OnExit()
		}
	}()
}

// Start starts the init (PID 1 of a new PID and UTS namespace, in the
// sandbox's network namespace and cgroup), which starts p.
func (s *Sandbox) Start(ctx context.Context, p Process) error {
	if _, err := s.begin("start"); err != nil {
		return err
	}
	defer s.end()
	if len(p.Argv) == 0 {
		return fmt.Errorf("start sandbox %s: empty command", s.cfg.Name)
	}
	args := initArgs(initConfig{Hostname: s.cfg.Hostname, Argv: p.Argv, Dir: p.Dir, Output: p.Output, ExitFile: p.ExitFile, User: p.User})
	for _, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("start sandbox %s: an argument, the hostname or a path holds a NUL byte: %q", s.cfg.Name, a)
		}
	}
	env, err := envFile(p.Env)
	if err != nil {
		return fmt.Errorf("start sandbox %s: the command's environment: %w", s.cfg.Name, err)
	}
	defer env.Close()
	if p.ExitFile != "" {
		if err := CreateOwned(p.ExitFile, p.User, 0o600); err != nil {
			return fmt.Errorf("start sandbox %s: create exit status file: %w", s.cfg.Name, err)
		}
	}
	cgf, err := s.cg.Open()
	if err != nil {
		return fmt.Errorf("start sandbox %s: %w", s.cfg.Name, err)
	}
	defer cgf.Close()
	out := os.DevNull
	if p.InitOutput != "" {
		out = p.InitOutput
	}
	outf, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start sandbox %s: open init output: %w", s.cfg.Name, err)
	}
	defer outf.Close()
	report, reportW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start sandbox %s: %w", s.cfg.Name, err)
	}
	defer report.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = args
	// The init (initearly.c) needs no environment; the command's is in env.
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = outf, outf
	cmd.ExtraFiles = []*os.File{reportW, env} // initReportFD, initEnvFD
	cmd.SysProcAttr = initSysProcAttr(int(cgf.Fd()))
	err = nsrun.InNetNS(s.sb.NS(), cmd.Start)
	reportW.Close()
	if err != nil {
		return fmt.Errorf("start sandbox %s: start init: %w", s.cfg.Name, err)
	}
	t := &tree{pid: cmd.Process.Pid, done: make(chan struct{})}
	s.mu.Lock()
	s.tree, s.state, s.exitErr = t, Running, nil
	s.mu.Unlock()
	s.watch(t, cmd.Wait)
	// The pipe closes when the command is executed, or says why it was not.
	msg, err := io.ReadAll(io.LimitReader(report, 4096))
	if err != nil {
		return fmt.Errorf("start sandbox %s: read the init's report: %w", s.cfg.Name, err)
	}
	if string(msg) != initExec {
		msg = []byte(strings.TrimPrefix(string(msg), initExec))
		if len(msg) == 0 {
			msg = []byte("the init ended before it started the command")
		}
		<-t.done
		return fmt.Errorf("start sandbox %s: %s", s.cfg.Name, msg)
	}
	uid, _ := p.User.IDs()
	s.log.Info("sandbox started", "pid", t.pid, "uid", uid, "argv", p.Argv)
	return nil
}

// Freeze freezes the tree (cgroup.freeze) and waits until it is frozen with
// no task caught inside a vfork, which CRIU cannot dump (see settle). When a
// task stays there, it thaws the tree and fails.
func (s *Sandbox) Freeze(ctx context.Context) error {
	if _, err := s.begin("freeze"); err != nil {
		return err
	}
	defer s.end()
	if err := s.cg.Freeze(ctx); err != nil {
		return fmt.Errorf("freeze sandbox %s: %w", s.cfg.Name, err)
	}
	// Frozen is dumpable only with no task caught inside a vfork.
	rounds, err := settle(ctx, s.cg)
	if err != nil {
		return fmt.Errorf("freeze sandbox %s: %w", s.cfg.Name, err)
	}
	if rounds > 0 {
		s.log.Info("a task was frozen inside a vfork: thawed and froze again", "rounds", rounds)
	}
	s.setState(Frozen)
	return nil
}

// Thaw undoes Freeze.
func (s *Sandbox) Thaw(ctx context.Context) error {
	if _, err := s.begin("thaw"); err != nil {
		return err
	}
	defer s.end()
	if err := s.cg.Thaw(ctx); err != nil {
		return fmt.Errorf("thaw sandbox %s: %w", s.cfg.Name, err)
	}
	s.setState(Running)
	return nil
}

// Kill kills the tree (cgroup.kill) and waits until it is reaped.
func (s *Sandbox) Kill(ctx context.Context) error {
	if _, err := s.begin("kill"); err != nil {
		return err
	}
	defer s.end()
	if err := s.killTree(ctx); err != nil {
		return fmt.Errorf("kill sandbox %s: %w", s.cfg.Name, err)
	}
	return nil
}

// toKill marks the tree as one being killed (its end is no exit of its
// own: watch) and returns it.
func (s *Sandbox) toKill() *tree {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killing = s.tree
	return s.tree
}

func (s *Sandbox) killTree(ctx context.Context) error {
	t := s.toKill()
	if err := s.cg.Kill(ctx); err != nil {
		s.mu.Lock()
		s.killing = nil // it may live on, and end by itself
		s.mu.Unlock()
		return err
	}
	if t != nil {
		select {
		case <-t.done:
		case <-ctx.Done():
			return fmt.Errorf("wait for init %d: %w", t.pid, context.Cause(ctx))
		}
	}
	s.mu.Lock()
	if s.state == Running || s.state == Frozen {
		s.state, s.exitErr = Exited, errors.New("killed")
	}
	s.mu.Unlock()
	return nil
}

// LockNetwork takes the sandbox off the wire (the host end of its veth goes
// down): peers' packets are dropped silently, never answered with RST, and
// nothing leaves. It is not part of the state machine. The shim does not use
// it: its lock is netquiesce's eBPF lock on the host veth (shim/agent). This
// link-down lock serves this package's own tests and the bench harness's raw
// CRIU measurements (bench/harness), which run sandboxes without a shim.
func (s *Sandbox) LockNetwork() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == Destroyed {
		return &TransitionError{Sandbox: s.cfg.Name, Op: "lock network", From: s.state}
	}
	if err := s.setLink(false); err != nil {
		return fmt.Errorf("lock network of %s: %w", s.cfg.Name, err)
	}
	s.locked = true
	return nil
}

// UnlockNetwork puts the sandbox back on the wire and announces its address
// (gratuitous ARP), so peers find it also after a move to another host.
func (s *Sandbox) UnlockNetwork() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == Destroyed {
		return &TransitionError{Sandbox: s.cfg.Name, Op: "unlock network", From: s.state}
	}
	if err := s.setLink(true); err != nil {
		return fmt.Errorf("unlock network of %s: %w", s.cfg.Name, err)
	}
	s.locked = false
	if err := netquiesce.AnnounceIP(s.sb.NS(), IfName, s.ip); err != nil {
		return fmt.Errorf("unlock network of %s: %w", s.cfg.Name, err)
	}
	return nil
}

// NetworkLocked says whether LockNetwork is in force.
func (s *Sandbox) NetworkLocked() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.locked
}

// Link is the sandbox's interface as netlink sees it (for tests and drain).
func (s *Sandbox) Link() (netlink.Link, error) { return s.sb.Link(IfName) }

// Destroy kills whatever runs, removes the cgroup, the veth and the
// namespace. It is idempotent.
func (s *Sandbox) Destroy(ctx context.Context) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.State() == Destroyed {
		return nil
	}
	err := s.teardown(ctx)
	s.setState(Destroyed)
	if err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", s.cfg.Name, err)
	}
	s.log.Debug("sandbox destroyed")
	return nil
}

// Release closes this process's handles on the sandbox and forgets it
// without touching it: namespace, veth, cgroup and tree live on, for
// another process to Adopt. The Sandbox is Destroyed for this process.
func (s *Sandbox) Release() {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.State() == Destroyed {
		return
	}
	if s.host != nil {
		s.host.Close()
		s.host = nil
	}
	if s.sb != nil {
		s.sb.Close()
		s.sb = nil
	}
	s.setState(Destroyed)
}

// cgroupTop is the first directory of parent below the mount ("/torpor"
// for "/torpor/cluster1"), DefaultCgroupParent's if parent is empty.
func cgroupTop(parent string) string {
	p := strings.Trim(filepath.Clean("/"+parent), "/")
	if p == "" {
		p = strings.Trim(DefaultCgroupParent, "/")
	}
	top, _, _ := strings.Cut(p, "/")
	return "/" + top
}

func (s *Sandbox) teardown(ctx context.Context) error {
	var errs []error
	if s.cg != nil {
		t := s.toKill()
		if err := s.cg.Kill(ctx); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		if t != nil {
			select {
			case <-t.done:
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("wait for init %d: %w", t.pid, context.Cause(ctx)))
			}
		}
		if err := s.cg.Remove(ctx); err != nil {
			errs = append(errs, err)
		}
		s.cg.RemoveEmptyParents(cgroupTop(s.cfg.CgroupParent))
	}
	if s.host != nil {
		// Delete the host end now: namespace teardown is asynchronous.
		if err := s.host.DelLink(s.cfg.HostVeth); err != nil {
			errs = append(errs, err)
		}
		s.host.Close()
		s.host = nil
	}
	if s.sb != nil {
		s.sb.Close()
		s.sb = nil
	}
	if err := netquiesce.DeleteNamedNetns(s.cfg.NetNS); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SolicitNeighbours asks at once for the link-layer address of every IPv4
// peer the sandbox's namespace still waits for, and returns them
// (netquiesce.SolicitNeighbours): after a restore, the packets sent while
// the job-node was locked wait in unresolved neighbour entries whose ARP
// requests the lock dropped. Call it when every job-node is unlocked. A
// sandbox without an IPv4 address has nothing to ask.
func (s *Sandbox) SolicitNeighbours() ([]net.IP, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == Destroyed || s.sb == nil {
		return nil, &TransitionError{Sandbox: s.cfg.Name, Op: "solicit neighbours", From: s.state}
	}
	if s.ip.To4() == nil {
		return nil, nil
	}
	asked, err := netquiesce.SolicitNeighbours(s.sb, IfName, s.ip)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.cfg.Name, err)
	}
	return asked, nil
}

// Announce sends gratuitous ARP for the sandbox's address from its
// interface, so bridges and peers learn at once where it lives now (after a
// restore on another host). The eBPF lock must be released first.
func (s *Sandbox) Announce() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == Destroyed || s.sb == nil {
		return &TransitionError{Sandbox: s.cfg.Name, Op: "announce", From: s.state}
	}
	if err := netquiesce.AnnounceIP(s.sb.NS(), IfName, s.ip); err != nil {
		return fmt.Errorf("announce %s of %s: %w", s.ip, s.cfg.Name, err)
	}
	return nil
}
