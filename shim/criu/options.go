package criu

import (
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"
)

// CgroupMode says what CRIU does with cgroups (--manage-cgroups).
type CgroupMode int

const (
	// CgroupIgnore: CRIU neither records nor recreates cgroups; restored tasks
	// stay in the cgroups of the CRIU process that restores them. torpor's
	// default: the driver starts CRIU inside the target sandbox's cgroup, so
	// the restored tree lands there.
	CgroupIgnore CgroupMode = iota
	// CgroupSoft: restore cgroup properties only for groups CRIU creates.
	CgroupSoft
	// CgroupFull: restore all cgroup properties.
	CgroupFull
	// CgroupStrict: fail if existing cgroups differ from the images.
	CgroupStrict
)

func (m CgroupMode) rpc() rpc.CriuCgMode {
	switch m {
	case CgroupSoft:
		return rpc.CriuCgMode_SOFT
	case CgroupFull:
		return rpc.CriuCgMode_FULL
	case CgroupStrict:
		return rpc.CriuCgMode_STRICT
	default:
		return rpc.CriuCgMode_IGNORE
	}
}

// NetworkLock says how CRIU locks the network of the dumped tree.
type NetworkLock int

const (
	// NetworkLockSkip: CRIU does not lock; the caller (torpor's netquiesce lock
	// spanning all nodes) does. The default: this machine has no iptables.
	NetworkLockSkip NetworkLock = iota
	// NetworkLockNftables: CRIU adds per-connection nftables rules.
	NetworkLockNftables
	// NetworkLockIptables: CRIU's own default, needs iptables.
	NetworkLockIptables
)

func (l NetworkLock) rpc() rpc.CriuNetworkLockMethod {
	switch l {
	case NetworkLockNftables:
		return rpc.CriuNetworkLockMethod_NFTABLES
	case NetworkLockIptables:
		return rpc.CriuNetworkLockMethod_IPTABLES
	default:
		return rpc.CriuNetworkLockMethod_SKIP
	}
}

// Options is one dump or restore, flat. The zero value of every field is the
// setting torpor wants unless it says otherwise; fields that only make sense
// for one direction say so.
type Options struct {
	// ImagesDir holds the image files: written by Dump, read by Restore.
	// Required.
	ImagesDir string
	// WorkDir receives CRIU's log (dump.log / restore.log) and its stats
	// (stats-dump / stats-restore), and is kept after the run. Defaults to
	// ImagesDir.
	WorkDir string
	// LogLevel is CRIU's -v level, 0..4; 0 means 4 (debug: the log is the
	// only evidence when a restore fails far away).
	LogLevel int32

	// Pid is the root of the tree to dump (in the caller's PID namespace).
	// Dump only; required there.
	Pid int

	// NetNSPath is the network namespace CRIU runs in (e.g.
	// /run/netns/torpor-x-n0). For dump it must be the tree's own namespace,
	// so CRIU treats it as external and does not try to dump it; for restore
	// the tree is restored into it. Empty: the caller's namespace.
	NetNSPath string
	// CgroupDir is a cgroup v2 directory the CRIU process is started in
	// (CLONE_INTO_CGROUP). With CgroupIgnore, restored tasks inherit it.
	// Empty: the caller's cgroup.
	CgroupDir string
	// Worker is a CRIU started ahead for this run (Driver.StartWorker, in
	// NetNSPath and CgroupDir). The run takes it; nil, or one that died
	// or was started elsewhere: a CRIU is started for the run.
	Worker *Worker

	// LeaveRunning keeps the tree running after a dump (checkpoint); false
	// kills it once the images are written (suspend, migration). Dump only.
	LeaveRunning bool
	// TCPEstablished dumps and restores established TCP connections with TCP
	// repair. Needed for any MPI job.
	TCPEstablished bool
	// NetworkLock: see NetworkLock. Zero is NetworkLockSkip.
	NetworkLock NetworkLock
	// ExtUnixSk allows unix sockets connected to peers outside the tree.
	ExtUnixSk bool
	// FileLocks dumps and restores flock/posix locks.
	FileLocks bool
	// LinkRemap allows dumping open files that were unlinked but still have
	// links elsewhere (via link-remap files).
	LinkRemap bool
	// GhostLimit is the largest deleted-but-open file CRIU copies into the
	// images, in bytes; 0 keeps CRIU's default (1 MiB).
	GhostLimit uint32
	// ShellJob allows a tree attached to a terminal/session outside it.
	ShellJob bool

	// Cgroups is the --manage-cgroups mode. Zero is CgroupIgnore.
	Cgroups CgroupMode
	// CgroupRoot maps the tree's root cgroup to this path on restore
	// (--cgroup-root), for CgroupSoft/Full/Strict.
	CgroupRoot string
	// FreezeCgroup is the cgroup (v1 freezer or v2 directory) CRIU freezes the
	// tree with instead of ptrace-interrupting each task; required when the
	// tree is already frozen. Dump only.
	FreezeCgroup string

	// RestoreSibling makes the restored root a child of the caller instead of
	// CRIU (swrk rst_sibling), so the caller can reap it. Restore only.
	RestoreSibling bool
	// External lists --external resources (e.g. "unix[ino]").
	External []string
	// LazyPages is post-copy. Dump: every page CRIU may restore lazily (the
	// tasks' private anonymous memory) stays out of the images; once they
	// are written (post-dump), CRIU serves those pages from a page server on
	// PageServerPort until a lazy-pages daemon has pulled them all, and only
	// then does the dump end (Driver.Dump returns at post-dump, with a
	// Serving handle). Restore: lazy pages come from the lazy-pages daemon
	// listening in WorkDir (StartLazyPages), which must run already.
	LazyPages bool
	// PageServerPort is the TCP port of a lazy dump's page server, on every
	// address of NetNSPath. Dump with LazyPages only; required there.
	PageServerPort int

	// Timeout is CRIU's own dump timeout in seconds (0: CRIU's default).
	// The context passed to Dump/Restore is the real deadline.
	Timeout uint32

	// Started, if set, is called with the PID of the CRIU process once it
	// runs, before the request is sent (not passed to CRIU). The dump guard
	// and tests use it to watch CRIU; it must not block.
	Started func(pid int)
	// Notify, if set, receives CRIU's notifications (its action scripts,
	// sent over the swrk socket): EventPreDump, EventPostDump,
	// EventPostRestore, ... CRIU waits for the answer, so the hook runs at
	// exactly that point of the operation, with the tree held; an error
	// answers "script failed", and CRIU aborts the operation (a failed
	// post-dump rolls the dump back). Not passed to CRIU.
	Notify func(Event) error
}

// Event is the name of one of CRIU's notifications (its action-script names).
type Event string

// The notifications torpor acts on. CRIU sends others too (network-lock,
// query-ext-files, ...); a hook answers them like any other.
const (
	// EventPreDump: CRIU starts a dump; the tasks are not seized yet.
	EventPreDump Event = "pre-dump"
	// EventPostDump: every image is written and flushed, every parasite
	// removed; the tasks are still seized (stopped). CRIU lets them go, or
	// kills them, after the answer.
	EventPostDump Event = "post-dump"
	// EventPreRestore: CRIU starts a restore.
	EventPreRestore Event = "pre-restore"
	// EventPostRestore: the tree is restored, still stopped; CRIU lets it
	// run after the answer.
	EventPostRestore Event = "post-restore"
)

func (o *Options) logLevel() int32 {
	if o.LogLevel <= 0 || o.LogLevel > 4 {
		return 4
	}
	return o.LogLevel
}

// toRPC maps o to CRIU's RPC options. Directory descriptors and the log file
// name are filled in by the caller.
func (o *Options) toRPC() *rpc.CriuOpts {
	r := &rpc.CriuOpts{
		LogLevel:          proto.Int32(o.logLevel()),
		LeaveRunning:      proto.Bool(o.LeaveRunning),
		TcpEstablished:    proto.Bool(o.TCPEstablished),
		NetworkLock:       o.NetworkLock.rpc().Enum(),
		ExtUnixSk:         proto.Bool(o.ExtUnixSk),
		FileLocks:         proto.Bool(o.FileLocks),
		LinkRemap:         proto.Bool(o.LinkRemap),
		ShellJob:          proto.Bool(o.ShellJob),
		ManageCgroups:     proto.Bool(o.Cgroups != CgroupIgnore),
		ManageCgroupsMode: o.Cgroups.rpc().Enum(),
		RstSibling:        proto.Bool(o.RestoreSibling),
		External:          o.External,
	}
	if o.Pid > 0 {
		r.Pid = proto.Int32(int32(o.Pid))
	}
	if o.GhostLimit > 0 {
		r.GhostLimit = proto.Uint32(o.GhostLimit)
	}
	if o.CgroupRoot != "" {
		r.CgRoot = []*rpc.CgroupRoot{{Path: proto.String(o.CgroupRoot)}}
	}
	if o.FreezeCgroup != "" {
		r.FreezeCgroup = proto.String(o.FreezeCgroup)
	}
	if o.Timeout > 0 {
		r.Timeout = proto.Uint32(o.Timeout)
	}
	if o.LazyPages {
		r.LazyPages = proto.Bool(true)
		if o.PageServerPort > 0 {
			// With lazy_pages CRIU takes only the port from ps: its page
			// server listens on every address (cr-service.c).
			r.Ps = &rpc.CriuPageServerInfo{Port: proto.Int32(int32(o.PageServerPort))}
		}
	}
	return r
}
