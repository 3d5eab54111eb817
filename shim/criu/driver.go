package criu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"

	"github.com/torpor-hpc/torpor/shim/criu/prlimit"
)

// ErrBadOptions means Options lack something the operation needs.
var ErrBadOptions = errors.New("bad criu options")

// Driver runs CRIU dumps and restores. It is safe for concurrent use: every
// operation runs its own `criu swrk` child.
type Driver struct {
	bin Binary
	log *slog.Logger

	// dumpMu runs dumps one at a time. CRIU 4.2.1's parasite creates a
	// temporary directory in the dumped task's mount namespace; parallel
	// dumps of sandboxes (whose inits are all namespace PID 1) on one machine
	// failed once in 40 with "parasite.c:634: Can't create a directory (-17)"
	// (EEXIST): the parasite mounts a private procfs at a fixed path in the
	// shared mount namespace. Simulated hosts are separate shim processes on
	// one machine, so the lock is machine-wide (an flock on DumpLockPath),
	// not per driver. Restores still run in parallel.
	dumpMu sync.Mutex

	versionOnce sync.Once
	version     Version
	versionErr  error

	lazyOnce sync.Once
	lazy     bool
	lazyErr  error

	preloadOnce sync.Once
	preload     *os.File // prlimit.so when this host needs it (see preloadLib)
	preloadErr  error

	kerndatOnce sync.Once
}

// Prepare gives CRIU its kernel cache (WarmKerndat), once per driver; every
// CRIU run does it first if nobody called Prepare. A failure is only logged:
// CRIU then probes the kernel at every run.
func (d *Driver) Prepare(ctx context.Context) {
	d.kerndatOnce.Do(func() {
		start := time.Now()
		mounted, err := WarmKerndat(ctx, d.bin.Path)
		switch {
		case err != nil:
			d.log.Warn("CRIU keeps no kernel cache here: it probes the kernel at every dump and restore", "err", err)
		case mounted:
			d.log.Info("CRIU's kernel cache is kept on a tmpfs: CRIU no longer probes the kernel at every dump and restore",
				"cache", KerndatCache, "took", time.Since(start))
		}
	})
}

// preloadLib is the library CRIU needs preloaded here, or nil: on a host
// whose root lacks CAP_SYS_RESOURCE, prlimit.so lets CRIU read a non-root
// task's resource limits (see shim/criu/prlimit).
func (d *Driver) preloadLib() (*os.File, error) {
	d.preloadOnce.Do(func() {
		need, err := prlimit.Needed()
		if err != nil || !need {
			d.preloadErr = err
			return
		}
		d.preload, d.preloadErr = prlimit.Memfd()
		if d.preloadErr == nil {
			d.log.Warn("this host's root lacks CAP_SYS_RESOURCE: CRIU reads the resource limits of a job's tasks from /proc/PID/limits through torpor's prlimit library")
		}
	})
	return d.preload, d.preloadErr
}

// NewDriver returns a driver for the CRIU binary bin. log may be nil.
func NewDriver(bin Binary, log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{bin: bin, log: log}
}

// Binary is the CRIU executable the driver runs.
func (d *Driver) Binary() Binary { return d.bin }

// Version asks CRIU for its version once and caches the answer.
func (d *Driver) Version(ctx context.Context) (Version, error) {
	d.versionOnce.Do(func() {
		d.version, d.versionErr = QueryVersion(ctx, d.bin.Path)
	})
	return d.version, d.versionErr
}

// DumpResult describes a finished dump.
type DumpResult struct {
	Stats   DumpStats // not for a lazy dump: CRIU writes them at its end
	LogPath string
	Elapsed time.Duration // wall time of the whole CRIU run (a lazy dump's: until the images were written)
	// Serving is a lazy dump's CRIU, still serving the memory pages.
	Serving *Serving
}

// RestoreResult describes a finished restore.
type RestoreResult struct {
	Pid     int // root of the restored tree, in the caller's PID namespace
	Stats   RestoreStats
	LogPath string
	Elapsed time.Duration
}

// Dump checkpoints the tree rooted at opts.Pid into opts.ImagesDir.
func (d *Driver) Dump(ctx context.Context, opts Options) (DumpResult, error) {
	if opts.Pid <= 0 {
		return DumpResult{}, fmt.Errorf("criu dump: %w: no Pid to dump", ErrBadOptions)
	}
	if err := os.MkdirAll(opts.ImagesDir, 0o700); err != nil {
		return DumpResult{}, fmt.Errorf("criu dump: create images dir: %w", err)
	}
	var res DumpResult
	d.dumpMu.Lock()
	defer d.dumpMu.Unlock()
	unlock, err := lockMachine(ctx, DumpLockPath)
	if err != nil {
		return DumpResult{}, fmt.Errorf("criu dump: %w", err)
	}
	defer unlock()
	if opts.LazyPages {
		// The machine lock guards the parasite, gone by post-dump: serving
		// the pages does not hold it.
		return d.dumpLazy(ctx, opts)
	}
	start := time.Now()
	logPath, _, err := d.run(ctx, rpc.CriuReqType_DUMP, "dump.log", opts)
	res.LogPath, res.Elapsed = logPath, time.Since(start)
	if err != nil {
		return res, err
	}
	st, err := ReadDumpStats(opts.statsDir())
	if err != nil {
		return res, fmt.Errorf("criu dump: %w", err)
	}
	res.Stats = st
	if opts.TCPEstablished {
		fixes, err := FixTCPWindows(opts.ImagesDir)
		if err != nil {
			return res, fmt.Errorf("criu dump: %w", err)
		}
		for _, f := range fixes {
			d.log.Info("criu dump: a connection's last window update came with data CRIU does not save (out of order); its snd_wl1 is set to rcv_nxt so that the window restores",
				"image", f.Image, "snd_wl1", f.SndWl1, "rcv_nxt", f.RcvNxt, "rcv_wnd", f.RcvWnd)
		}
	}
	d.log.Debug("criu dump done", "pid", opts.Pid, "elapsed", res.Elapsed,
		"frozen", st.FrozenTime, "memdump", st.MemdumpTime, "memwrite", st.MemwriteTime, "pages", st.PagesWritten, "bytes", st.ImageBytes)
	return res, nil
}

// Restore restores the tree in opts.ImagesDir, inside opts.NetNSPath.
func (d *Driver) Restore(ctx context.Context, opts Options) (RestoreResult, error) {
	if st, err := os.Stat(opts.ImagesDir); err != nil || !st.IsDir() {
		return RestoreResult{}, fmt.Errorf("criu restore: %w: images dir %q is not a directory", ErrBadOptions, opts.ImagesDir)
	}
	opts.Pid = 0
	var res RestoreResult
	start := time.Now()
	logPath, resp, err := d.run(ctx, rpc.CriuReqType_RESTORE, "restore.log", opts)
	res.LogPath, res.Elapsed = logPath, time.Since(start)
	if err != nil {
		return res, err
	}
	res.Pid = int(resp.GetRestore().GetPid())
	st, err := ReadRestoreStats(opts.statsDir())
	if err != nil {
		return res, fmt.Errorf("criu restore: %w", err)
	}
	res.Stats = st
	d.log.Debug("criu restore done", "pid", res.Pid, "elapsed", res.Elapsed, "restore", st.RestoreTime)
	return res, nil
}

func (d *Driver) run(ctx context.Context, typ rpc.CriuReqType, logName string, opts Options) (string, *rpc.CriuResp, error) {
	op := "dump"
	if typ == rpc.CriuReqType_RESTORE {
		op = "restore"
	}
	if opts.ImagesDir == "" {
		return "", nil, fmt.Errorf("criu %s: %w: ImagesDir is empty", op, ErrBadOptions)
	}
	workDir := opts.WorkDir
	if workDir == "" {
		workDir = opts.ImagesDir
	}
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return "", nil, fmt.Errorf("criu %s: create work dir: %w", op, err)
	}
	logPath := filepath.Join(workDir, logName)
	_ = os.Remove(logPath)

	imgDir, err := os.Open(opts.ImagesDir)
	if err != nil {
		return logPath, nil, fmt.Errorf("criu %s: open images dir: %w", op, err)
	}
	defer imgDir.Close()
	wDir, err := os.Open(workDir)
	if err != nil {
		return logPath, nil, fmt.Errorf("criu %s: open work dir: %w", op, err)
	}
	defer wDir.Close()

	ro := opts.toRPC()
	// CRIU opens these through /proc/<client pid>/fd/N of the RPC peer.
	ro.ImagesDirFd = proto.Int32(int32(imgDir.Fd()))
	ro.WorkDirFd = proto.Int32(int32(wDir.Fd()))
	ro.LogFile = proto.String(logName)
	if opts.Notify != nil {
		ro.NotifyScripts = proto.Bool(true)
	}

	s := opts.Worker.take(opts.NetNSPath, opts.CgroupDir)
	if s == nil {
		if s, err = d.startSwrk(ctx, opts.NetNSPath, opts.CgroupDir); err != nil {
			return logPath, nil, fmt.Errorf("criu %s: %w", op, err)
		}
	}
	if opts.Started != nil {
		opts.Started(s.cmd.Process.Pid)
	}
	resp, err := s.call(ctx, &rpc.CriuReq{Type: typ.Enum(), Opts: ro}, opts.Notify)
	if err != nil {
		return logPath, resp, &Error{Op: op, Line: FirstErrorLine(logPath), LogPath: logPath, Err: err}
	}
	return logPath, resp, nil
}

// statsDir is where CRIU leaves stats-dump / stats-restore: its work dir.
func (o Options) statsDir() string {
	if o.WorkDir != "" {
		return o.WorkDir
	}
	return o.ImagesDir
}
