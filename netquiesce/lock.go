package netquiesce

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ErrNotSupported marks a lock mechanism the running kernel lacks. Errors that
// wrap it also wrap cilium/ebpf's ErrNotSupported when that is the cause.
var ErrNotSupported = errors.New("not supported by this kernel")

// ErrNoTarget is returned by Attach when neither an interface nor a cgroup is
// given for the chosen mode.
var ErrNoTarget = errors.New("no interface or cgroup to lock")

// Mode selects how the lock programs are attached.
type Mode int

const (
	// ModeAuto tries TCX on the interface, then cgroup_skb on the cgroup.
	ModeAuto Mode = iota
	// ModeTCX attaches TCX ingress+egress programs to an interface (Linux >= 6.6).
	ModeTCX
	// ModeCgroupSKB attaches cgroup_skb ingress+egress programs to a cgroup v2
	// directory: for jobs that have no network namespace of their own.
	ModeCgroupSKB
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeTCX:
		return "tcx"
	case ModeCgroupSKB:
		return "cgroup_skb"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Target says what to lock. With ModeAuto give Interface (and Net) for TCX and
// Cgroup for the cgroup_skb fallback; either may be empty.
type Target struct {
	// Net is the namespace that holds Interface; nil means the caller's.
	Net *Net
	// Interface is the sandbox's interface, e.g. its eth0, or the host-side
	// veth peer.
	Interface string
	// Cgroup is a cgroup v2 directory, e.g. /sys/fs/cgroup/unified/torpor/job1.
	// Descendant cgroups are locked too.
	Cgroup string
}

// Options tune Attach. The zero value is ModeAuto with a discarding logger.
type Options struct {
	Mode   Mode
	Logger *slog.Logger
}

// Lock is an attached network lock. It starts unlocked: packets pass and are
// not counted. Lock and Unlock flip a map value, so they take microseconds and
// never detach anything; Close detaches the programs. Safe for concurrent use.
type Lock struct {
	mode   Mode
	target string
	log    *slog.Logger
	maps   quiesceMaps
	progs  []*ebpf.Program
	links  []link.Link

	mu     sync.Mutex
	locked bool
	closed bool
}

// Attach loads the lock programs and attaches them as Options.Mode says. In
// ModeAuto a TCX failure that wraps ErrNotSupported falls back to cgroup_skb;
// if nothing can be attached the error wraps ErrNotSupported and names what
// is missing.
func Attach(t Target, opts Options) (*Lock, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch opts.Mode {
	case ModeTCX:
		return attachTCXFunc(t, log)
	case ModeCgroupSKB:
		return attachCgroupFunc(t, log)
	case ModeAuto:
	default:
		return nil, fmt.Errorf("attach network lock: unknown mode %v", opts.Mode)
	}
	if t.Interface == "" && t.Cgroup == "" {
		return nil, fmt.Errorf("attach network lock: %w", ErrNoTarget)
	}
	var tcxErr error
	if t.Interface != "" {
		l, err := attachTCXFunc(t, log)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, ErrNotSupported) {
			return nil, err
		}
		tcxErr = err
		log.Warn("tcx network lock not supported, falling back to cgroup_skb", "interface", t.Interface, "err", err)
	}
	if t.Cgroup == "" {
		return nil, fmt.Errorf("attach network lock on %q: %w; give the job's cgroup to use the cgroup_skb fallback", t.Interface, tcxErr)
	}
	l, err := attachCgroupFunc(t, log)
	if err == nil {
		return l, nil
	}
	if tcxErr != nil {
		return nil, fmt.Errorf("attach network lock: no mechanism works: tcx: %v; cgroup_skb: %w", tcxErr, err)
	}
	return nil, err
}

// Seams for tests of the fallback logic.
var (
	attachTCXFunc    = attachTCX
	attachCgroupFunc = attachCgroup
)

// notSupported wraps err so that it matches both ErrNotSupported and err.
func notSupported(what string, err error) error {
	return fmt.Errorf("%s: %w: %w", what, ErrNotSupported, err)
}

// Mode reports how the lock is attached (ModeTCX or ModeCgroupSKB).
func (l *Lock) Mode() Mode { return l.mode }

// String names the mode and the target, e.g. "tcx:eth0".
func (l *Lock) String() string { return l.mode.String() + ":" + l.target }

// Locked reports whether the lock is engaged.
func (l *Lock) Locked() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.locked
}

// Lock starts dropping every packet in both directions. The counters are reset
// when the lock engages; locking a locked Lock changes nothing and returns the
// counters so far.
func (l *Lock) Lock() (Counters, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Counters{}, fmt.Errorf("lock %s: %w", l, ErrClosed)
	}
	if l.locked {
		return l.readCounters()
	}
	if err := l.resetCounters(); err != nil {
		return Counters{}, err
	}
	if err := l.maps.LockState.Put(uint32(0), uint32(1)); err != nil {
		return Counters{}, fmt.Errorf("lock %s: set lock state: %w", l, err)
	}
	l.locked = true
	l.log.Debug("network locked", "lock", l.String())
	return Counters{}, nil
}

// Unlock lets packets pass again and returns what was dropped while locked.
// Unlocking an unlocked Lock changes nothing and returns the counters of the
// last lock period.
func (l *Lock) Unlock() (Counters, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Counters{}, fmt.Errorf("unlock %s: %w", l, ErrClosed)
	}
	if l.locked {
		if err := l.maps.LockState.Put(uint32(0), uint32(0)); err != nil {
			return Counters{}, fmt.Errorf("unlock %s: set lock state: %w", l, err)
		}
		l.locked = false
	}
	c, err := l.readCounters()
	if err != nil {
		return Counters{}, err
	}
	l.log.Debug("network unlocked", "lock", l.String(), "dropped_packets", c.Total().Packets)
	return c, nil
}

// Counters returns the drops counted since the last Lock.
func (l *Lock) Counters() (Counters, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Counters{}, fmt.Errorf("read counters of %s: %w", l, ErrClosed)
	}
	return l.readCounters()
}

// ErrClosed is returned by a Lock used after Close.
var ErrClosed = errors.New("network lock closed")

// Close detaches and unloads the programs; traffic flows freely afterwards,
// even if the lock was engaged. Closing twice is fine.
func (l *Lock) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, lk := range l.links {
		if err := lk.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", l, err))
		}
	}
	for _, p := range l.progs {
		p.Close()
	}
	l.maps.Close()
	return errors.Join(errs...)
}

// readCounters sums the per-CPU counters, in one batch syscall where the
// kernel supports it.
func (l *Lock) readCounters() (Counters, error) {
	const n = numDirections * numProtocols
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return Counters{}, fmt.Errorf("read counters of %s: %w", l, err)
	}
	keys := make([]uint32, n)
	vals := make([]quiesceCounter, n*ncpu)
	var cursor ebpf.MapBatchCursor
	got, err := l.maps.Counters.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) || got != n {
		// No batch support: one lookup per key.
		got = n
		for k := range uint32(n) {
			keys[k] = k
			if err := l.maps.Counters.Lookup(k, vals[int(k)*ncpu:int(k+1)*ncpu]); err != nil {
				return Counters{}, fmt.Errorf("read counters of %s: %w", l, err)
			}
		}
	}
	var out Counters
	for i, k := range keys[:got] {
		d, p := int(k)/numProtocols, int(k)%numProtocols
		for _, c := range vals[i*ncpu : (i+1)*ncpu] {
			out[d][p].Packets += c.Packets
			out[d][p].Bytes += c.Bytes
		}
	}
	return out, nil
}

func (l *Lock) resetCounters() error {
	const n = numDirections * numProtocols
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("reset counters of %s: %w", l, err)
	}
	keys := make([]uint32, n)
	for k := range keys {
		keys[k] = uint32(k)
	}
	if _, err := l.maps.Counters.BatchUpdate(keys, make([]quiesceCounter, n*ncpu), nil); err == nil {
		return nil
	}
	zero := make([]quiesceCounter, ncpu)
	for _, k := range keys {
		if err := l.maps.Counters.Put(k, zero); err != nil {
			return fmt.Errorf("reset counters of %s: %w", l, err)
		}
	}
	return nil
}
