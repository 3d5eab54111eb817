package netquiesce

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// tcxObjects loads only the maps and the two TCX programs.
type tcxObjects struct {
	quiesceMaps
	Ingress *ebpf.Program `ebpf:"tcx_ingress"`
	Egress  *ebpf.Program `ebpf:"tcx_egress"`
}

// cgroupObjects loads only the maps and the two cgroup_skb programs.
type cgroupObjects struct {
	quiesceMaps
	Ingress *ebpf.Program `ebpf:"cgroup_ingress"`
	Egress  *ebpf.Program `ebpf:"cgroup_egress"`
}

func loadObjects(obj any, what string) error {
	if err := loadQuiesceObjects(obj, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load %s lock programs: %+v", what, ve)
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return notSupported("load "+what+" lock programs", err)
		}
		return fmt.Errorf("load %s lock programs: %w", what, err)
	}
	return nil
}

// tcxSpare is one set of the TCX lock's objects loaded ahead of the Attach
// that takes it. Loading them (the kernel's verifier, about 2 ms here) is a
// third of making a job-node's sandbox, which a restart waits for; an
// Attach takes the spare and loads the next one in the background. Objects
// that are loaded but not attached act on nothing.
var tcxSpare struct {
	mu     sync.Mutex
	objs   *tcxObjects
	loaded chan struct{} // while a spare is being loaded: closed once it is there, or failed
}

// takeTCXObjects returns the spare set of TCX objects, or loads one, and
// starts loading the next spare unless one is already being loaded.
func takeTCXObjects() (*tcxObjects, error) {
	tcxSpare.mu.Lock()
	objs := tcxSpare.objs
	tcxSpare.objs = nil
	var loaded chan struct{}
	if tcxSpare.loaded == nil {
		loaded = make(chan struct{})
		tcxSpare.loaded = loaded
	}
	tcxSpare.mu.Unlock()
	// done ends the loading this call started, keeping next if it loaded.
	done := func(next *tcxObjects) {
		tcxSpare.mu.Lock()
		tcxSpare.objs, tcxSpare.loaded = next, nil
		tcxSpare.mu.Unlock()
		close(loaded)
	}
	if objs == nil {
		objs = new(tcxObjects)
		if err := loadObjects(objs, "tcx"); err != nil {
			// Where the kernel cannot load them no spare is kept.
			if loaded != nil {
				done(nil)
			}
			return nil, err
		}
	}
	if loaded != nil {
		go func() {
			next := new(tcxObjects)
			if err := loadObjects(next, "tcx"); err != nil {
				next = nil
			}
			done(next)
		}()
	}
	return objs, nil
}

// attachTCX attaches the TCX programs to t.Interface in t.Net. The link is
// created on a thread inside that namespace, because the kernel resolves the
// interface index in the caller's namespace.
func attachTCX(t Target, log *slog.Logger) (*Lock, error) {
	if t.Interface == "" {
		return nil, fmt.Errorf("attach tcx network lock: %w", ErrNoTarget)
	}
	objs, err := takeTCXObjects()
	if err != nil {
		return nil, err
	}
	l := &Lock{mode: ModeTCX, target: t.Interface, log: log, maps: objs.quiesceMaps,
		progs: []*ebpf.Program{objs.Ingress, objs.Egress}}
	attach := func() error {
		var ifindex int
		if t.Net != nil {
			lk, err := t.Net.Link(t.Interface)
			if err != nil {
				return err
			}
			ifindex = lk.Attrs().Index
		} else {
			lk, err := netInterfaceIndex(t.Interface)
			if err != nil {
				return err
			}
			ifindex = lk
		}
		for _, a := range []struct {
			prog *ebpf.Program
			typ  ebpf.AttachType
		}{{objs.Ingress, ebpf.AttachTCXIngress}, {objs.Egress, ebpf.AttachTCXEgress}} {
			lk, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: a.prog, Attach: a.typ})
			if err != nil {
				if errors.Is(err, ebpf.ErrNotSupported) {
					return notSupported(fmt.Sprintf("attach tcx %s on %q", a.typ, t.Interface), err)
				}
				return fmt.Errorf("attach tcx %s on %q: %w", a.typ, t.Interface, err)
			}
			l.links = append(l.links, lk)
		}
		return nil
	}
	if t.Net != nil {
		err = nsrun.InNetNS(t.Net.NS(), attach)
	} else {
		err = attach()
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// attachCgroup attaches the cgroup_skb programs to the cgroup v2 directory
// t.Cgroup.
func attachCgroup(t Target, log *slog.Logger) (*Lock, error) {
	if t.Cgroup == "" {
		return nil, fmt.Errorf("attach cgroup_skb network lock: %w", ErrNoTarget)
	}
	if fi, err := os.Stat(t.Cgroup); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("attach cgroup_skb network lock: cgroup %q is not a directory: %v", t.Cgroup, err)
	}
	var objs cgroupObjects
	if err := loadObjects(&objs, "cgroup_skb"); err != nil {
		return nil, err
	}
	l := &Lock{mode: ModeCgroupSKB, target: t.Cgroup, log: log, maps: objs.quiesceMaps,
		progs: []*ebpf.Program{objs.Ingress, objs.Egress}}
	for _, a := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{{objs.Ingress, ebpf.AttachCGroupInetIngress}, {objs.Egress, ebpf.AttachCGroupInetEgress}} {
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: t.Cgroup, Attach: a.typ, Program: a.prog})
		if err != nil {
			l.Close()
			if errors.Is(err, ebpf.ErrNotSupported) {
				return nil, notSupported(fmt.Sprintf("attach cgroup_skb %s on %s", a.typ, t.Cgroup), err)
			}
			return nil, fmt.Errorf("attach cgroup_skb %s on %s: %w", a.typ, t.Cgroup, err)
		}
		l.links = append(l.links, lk)
	}
	return l, nil
}
