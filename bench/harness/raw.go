package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/sandbox"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// RawSet is the raw-CRIU comparison: the same workload in sandboxes the
// harness creates itself, dumped and restored with the CRIU driver directly
// (no coordinator, no agent, no eBPF lock: the veth is taken down instead).
type RawSet struct {
	e     *Env
	sbs   []*sandbox.Sandbox
	files []nodeFiles
	dir   string
}

// StartRaw creates one sandbox per host entry, runs w in each and waits
// until it runs.
func (e *Env) StartRaw(ctx context.Context, id string, hosts []string, w Workload) (_ *RawSet, err error) {
	e.seq++
	r := &RawSet{e: e, dir: filepath.Join(e.Dir, "raw", id)}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	for i, hname := range hosts {
		var hi int
		fmt.Sscanf(hname, "h%d", &hi)
		h := e.Cluster.Host(hi)
		spec, f, err := jobNode(e.Dir, id, i, len(hosts), hname, w, e.Bins)
		if err != nil {
			return nil, err
		}
		sb, err := sandbox.New(ctx, sandbox.Config{
			Name:      id + "/" + spec.Name,
			NetNS:     simhost.NetNSName(e.Name, fmt.Sprintf("r%d-%d", e.seq, i)),
			Hostname:  spec.Hostname,
			Address:   spec.IP,
			HostNetNS: h.NetNS,
			Bridge:    h.Bridge,
			Cgroup:    fmt.Sprintf("%s/raw/%s/%s", e.CgParent, id, spec.Name),
			Log:       e.Log,
		})
		if err != nil {
			return nil, err
		}
		r.sbs = append(r.sbs, sb)
		r.files = append(r.files, f)
		out := filepath.Join(e.Dir, "status", id, spec.Name+".out")
		if err := sb.Start(ctx, sandbox.Process{Argv: spec.Argv, Output: out}); err != nil {
			return nil, err
		}
	}
	if err := waitReady(ctx, r.files, 60*time.Second); err != nil {
		return nil, err
	}
	return r, nil
}

// Close destroys every sandbox and the images.
func (r *RawSet) Close() error {
	var errs []error
	for _, sb := range r.sbs {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, sb.Destroy(ctx))
		cancel()
	}
	errs = append(errs, os.RemoveAll(r.dir))
	return errors.Join(errs...)
}

func (r *RawSet) opts(dir string, leaveRunning bool) criu.Options {
	return criu.Options{ImagesDir: dir, TCPEstablished: true, LeaveRunning: leaveRunning, FileLocks: true, LinkRemap: true}
}

func (r *RawSet) lock() error {
	for _, sb := range r.sbs {
		if err := sb.LockNetwork(); err != nil {
			return err
		}
	}
	return nil
}

func (r *RawSet) unlock() error {
	for _, sb := range r.sbs {
		if err := sb.UnlockNetwork(); err != nil {
			return err
		}
	}
	return nil
}

// RawDump is one raw dump of the whole set.
type RawDump struct {
	Wall  time.Duration   `json:"wall_ns"` // every sandbox dumped
	Each  []time.Duration `json:"each_ns"` // CRIU wall time per sandbox
	Bytes int64           `json:"bytes"`
}

// RawDumpOptions are how a raw dump is made.
type RawDumpOptions struct {
	// Parallel: all sandboxes at once (the driver still runs one CRIU
	// dump at a time on this machine), not one after the other.
	Parallel     bool
	LeaveRunning bool
	// Hash: each sandbox's memory images are hashed while CRIU writes them,
	// by the stream hasher a shim's dump runs (catalog.StartStreamHasher),
	// and Wall ends when the hashes are done: raw CRIU with torpor's
	// hashing and nothing else of torpor.
	Hash bool
}

// Dump dumps every sandbox. The network is locked around the dumps, not
// inside Wall.
func (r *RawSet) Dump(ctx context.Context, tag string, o RawDumpOptions) (RawDump, []string, error) {
	// Only the newest sample's images are kept, as torpor keeps only the
	// newest checkpoint here (see settle).
	if err := os.RemoveAll(r.dir); err != nil {
		return RawDump{}, nil, err
	}
	dirs := make([]string, len(r.sbs))
	for i := range r.sbs {
		dirs[i] = filepath.Join(r.dir, tag, fmt.Sprintf("n%d", i))
	}
	if o.Hash {
		// The hasher watches the directory: made before, outside Wall.
		for _, d := range dirs {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return RawDump{}, nil, err
			}
		}
	}
	r.e.settle()
	if err := r.lock(); err != nil {
		return RawDump{}, nil, err
	}
	res := make([]criu.DumpResult, len(r.sbs))
	errs := make([]error, len(r.sbs))
	dump := func(i int) {
		if !o.Hash {
			res[i], errs[i] = r.sbs[i].Dump(ctx, r.e.Drv, r.opts(dirs[i], o.LeaveRunning))
			return
		}
		h := catalog.StartStreamHasher(dirs[i], criu.IsPages)
		if res[i], errs[i] = r.sbs[i].Dump(ctx, r.e.Drv, r.opts(dirs[i], o.LeaveRunning)); errs[i] != nil {
			h.Stop()
			return
		}
		_, errs[i] = h.Finish(ctx)
	}
	start := time.Now()
	if o.Parallel {
		var wg sync.WaitGroup
		for i := range r.sbs {
			wg.Go(func() { dump(i) })
		}
		wg.Wait()
	} else {
		for i := range r.sbs {
			if dump(i); errs[i] != nil {
				break
			}
		}
	}
	d := RawDump{Wall: time.Since(start)}
	if o.LeaveRunning {
		if err := r.unlock(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return d, dirs, err
	}
	for _, x := range res {
		d.Each = append(d.Each, x.Elapsed)
		d.Bytes += x.Stats.ImageBytes
	}
	return d, dirs, nil
}

// RawRestore is one raw restore of the whole set.
type RawRestore struct {
	Wall     time.Duration   `json:"wall_ns"`
	Each     []time.Duration `json:"each_ns"`
	Progress Progress        `json:"progress"` // from the end of the unlock
}

// RawRestoreOptions are how a raw restore is made.
type RawRestoreOptions struct {
	Parallel bool // all sandboxes at once, not one after the other
	// Verify: each sandbox's memory images are verified against a node
	// manifest while CRIU restores, as a shim verifies them
	// (catalog.NodeImages.Verify), and Wall ends when both are done: raw
	// CRIU with torpor's verification and nothing else of torpor. The
	// node manifests are written before, outside Wall.
	Verify bool
	// Lazy: CRIU restores lazily, each sandbox's memory filled by a
	// `criu lazy-pages` daemon reading the same images (what a shim does
	// above Config.LazyRestoreFrom, without the verification and the
	// freeze), and Wall ends when every daemon has filled every page. The
	// daemons are started and ready before Wall begins.
	Lazy bool
}

// Restore restores every sandbox from dirs, unlocks them, and measures how
// soon the job makes progress.
func (r *RawSet) Restore(ctx context.Context, dirs []string, o RawRestoreOptions, memBase []uint64) (RawRestore, error) {
	res := make([]criu.RestoreResult, len(r.sbs))
	errs := make([]error, len(r.sbs))
	var imgs []*catalog.NodeImages
	if o.Verify {
		for _, d := range dirs {
			if _, err := catalog.WriteNodeManifest(ctx, d); err != nil {
				return RawRestore{}, err
			}
			sum, err := catalog.NodeManifestSHA256(d)
			if err != nil {
				return RawRestore{}, err
			}
			im, err := catalog.OpenNodeImages(d, sum)
			if err != nil {
				return RawRestore{}, err
			}
			defer im.Close()
			imgs = append(imgs, im)
		}
	}
	var fills []*criu.LazyPages
	var works []string
	if o.Lazy {
		for _, d := range dirs {
			work, err := os.MkdirTemp(r.e.Dir, "rawfill-")
			if err != nil {
				return RawRestore{}, err
			}
			defer os.RemoveAll(work)
			lp, err := r.e.Drv.StartLazyPages(ctx, criu.LazyPagesOptions{ImagesDir: d, WorkDir: work})
			if err != nil {
				return RawRestore{}, err
			}
			defer lp.Kill() // only if the restore failed: it has ended otherwise
			fills, works = append(fills, lp), append(works, work)
		}
	}
	restore := func(i int) {
		if o.Lazy {
			opts := r.opts(dirs[i], false)
			opts.LazyPages, opts.WorkDir = true, works[i]
			if res[i], errs[i] = r.sbs[i].Restore(ctx, r.e.Drv, opts); errs[i] == nil {
				<-fills[i].Done()
				errs[i] = fills[i].Err()
			}
			return
		}
		if !o.Verify {
			res[i], errs[i] = r.sbs[i].Restore(ctx, r.e.Drv, r.opts(dirs[i], false))
			return
		}
		verified := make(chan error, 1)
		go func() { verified <- imgs[i].Verify(ctx, criu.IsPages) }()
		res[i], errs[i] = r.sbs[i].Restore(ctx, r.e.Drv, r.opts(dirs[i], false))
		errs[i] = errors.Join(errs[i], <-verified)
	}
	r.e.settle()
	start := time.Now()
	if o.Parallel {
		var wg sync.WaitGroup
		for i := range r.sbs {
			wg.Go(func() { restore(i) })
		}
		wg.Wait()
	} else {
		for i := range r.sbs {
			if restore(i); errs[i] != nil {
				break
			}
		}
	}
	out := RawRestore{Wall: time.Since(start)}
	if err := errors.Join(errs...); err != nil {
		return out, err
	}
	for _, x := range res {
		out.Each = append(out.Each, x.Elapsed)
	}
	segBase := make([]uint64, len(r.sbs))
	for i, sb := range r.sbs {
		v, err := netquiesce.TCPInSegs(sb.Pid())
		if err != nil {
			return out, err
		}
		segBase[i] = v
	}
	if err := r.unlock(); err != nil {
		return out, err
	}
	unlocked := time.Now()
	var probe segProbe
	if r.files[0].Recv != "" {
		probe = func() ([]uint64, error) {
			v := make([]uint64, len(r.sbs))
			for i, sb := range r.sbs {
				var err error
				if v[i], err = netquiesce.TCPInSegs(sb.Pid()); err != nil {
					return nil, err
				}
			}
			return v, nil
		}
	} else {
		segBase = nil
	}
	var err error
	out.Progress, err = waitProgress(ctx, r.files, memBase, probe, segBase, unlocked, 30*time.Second)
	return out, err
}

// memCounters reads every memhog counter.
func (r *RawSet) memCounters() ([]uint64, error) {
	c, err := readAll(r.files)
	return c.mem, err
}
