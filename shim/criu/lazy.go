package criu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// Post-copy with CRIU (criu/cr-dump.c, criu/uffd.c, criu/page-xfer.c):
//
//   - source: a dump with lazy_pages writes every image but the lazy memory
//     (private anonymous pages), answers post-dump, then runs a page server
//     on ps.port that hands out the pages it keeps in pipes until the client
//     closes the connection; only then does the dump request end. Through
//     swrk (RPC), lazy_pages and ps.port work; ps.address and ps.fd are
//     ignored for a lazy dump, so the server listens on every address of the
//     namespace CRIU runs in.
//   - destination: `criu lazy-pages --page-server --address A --port P` has
//     no RPC form: it is a CLI daemon. It listens on lazy-pages.socket in its
//     work directory, takes the userfaultfds of the tasks a `restore
//     --lazy-pages` (RPC is fine) with the same work directory sends it,
//     then connects to the page server, fills page faults first and every
//     other page in the background, and exits 0 once every task has all its
//     pages (or has exited).
//
// A page server connection closed before the daemon asked for everything
// ends the source's dump "successfully": the destination, not the source,
// knows whether every page arrived.

// lazyPagesSocket is the unix socket, in the work directory, through which a
// lazy restore hands its tasks' userfaultfds to the lazy-pages daemon.
const lazyPagesSocket = "lazy-pages.socket"

// Serving is a lazy dump whose images are written: its CRIU still runs,
// serving the tree's memory pages, until the lazy-pages daemon on the
// destination has pulled them all (or the connection breaks, or Stop).
type Serving struct {
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	logPath string
}

// Done is closed when CRIU has ended.
func (s *Serving) Done() <-chan struct{} { return s.done }

// Err is how CRIU ended; call it after Done.
func (s *Serving) Err() error { return s.err }

// LogPath is the dump's log, which goes on with the page server's.
func (s *Serving) LogPath() string { return s.logPath }

// Stop ends the page server (it kills CRIU if it still serves) and waits
// until CRIU is reaped. A tree dumped with LeaveRunning stays as it was
// (frozen, when it was frozen before the dump).
func (s *Serving) Stop() {
	s.cancel()
	<-s.done
}

// dumpLazy is Dump with LazyPages: it returns once the images are written
// (CRIU's post-dump notification was answered), with CRIU still serving the
// memory pages (DumpResult.Serving). Until then ctx bounds CRIU; afterwards
// only Serving.Stop does.
func (d *Driver) dumpLazy(ctx context.Context, opts Options) (DumpResult, error) {
	if opts.PageServerPort <= 0 {
		return DumpResult{}, fmt.Errorf("criu dump: %w: a lazy dump needs PageServerPort", ErrBadOptions)
	}
	posted := make(chan struct{})
	var once sync.Once
	hook := opts.Notify
	opts.Notify = func(ev Event) error {
		if hook != nil {
			if err := hook(ev); err != nil {
				return err
			}
		}
		if ev == EventPostDump {
			once.Do(func() { close(posted) })
		}
		return nil
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	untilPosted := context.AfterFunc(ctx, cancel)
	s := &Serving{cancel: cancel, done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(s.done)
		s.logPath, _, s.err = d.run(runCtx, rpc.CriuReqType_DUMP, "dump.log", opts)
	}()
	select {
	case <-posted:
		if untilPosted() {
			break
		}
		<-s.done // ctx ended as the images were finished: CRIU is killed
	case <-s.done:
		untilPosted()
	}
	select {
	case <-s.done:
		cancel()
		err := s.err
		if err == nil {
			err = fmt.Errorf("criu dump: CRIU ended a lazy dump without serving its pages (%w)", context.Cause(ctx))
		}
		return DumpResult{LogPath: s.logPath, Elapsed: time.Since(start)}, err
	default:
	}
	res := DumpResult{LogPath: filepath.Join(opts.statsDir(), "dump.log"), Elapsed: time.Since(start), Serving: s}
	if opts.TCPEstablished {
		if _, err := FixTCPWindows(opts.ImagesDir); err != nil {
			s.Stop()
			return res, fmt.Errorf("criu dump: %w", err)
		}
	}
	d.log.Debug("criu lazy dump: images written, serving pages", "pid", opts.Pid, "elapsed", res.Elapsed, "port", opts.PageServerPort)
	return res, nil
}

// LazyPagesOptions start the destination's lazy-pages daemon.
type LazyPagesOptions struct {
	// ImagesDir holds the lazy dump's images (the daemon reads the tree and
	// its page maps there).
	ImagesDir string
	// WorkDir is where the daemon listens for the restore (lazy-pages.socket)
	// and writes lazy-pages.log: the restore's WorkDir.
	WorkDir string
	// Address and Port are the source's page server. Both unset: the
	// daemon reads the pages from ImagesDir itself (a local lazy restore:
	// the memory images are here, and the daemon's UFFDIO_COPY fills a
	// page without the page fault an eager restore's read into it takes).
	Address string
	Port    int
	// NetNSPath is the network namespace the daemon runs in (a host's, from
	// which the page server is reachable). Empty: the caller's.
	NetNSPath string
}

// LazyPages is a running lazy-pages daemon.
type LazyPages struct {
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	logPath string
}

// StartLazyPages starts `criu lazy-pages` and returns once it listens for
// the restore (its --status-fd), or fails with the first error of its log.
func (d *Driver) StartLazyPages(ctx context.Context, o LazyPagesOptions) (*LazyPages, error) {
	local := o.Address == "" && o.Port == 0
	if o.ImagesDir == "" || o.WorkDir == "" || (!local && (o.Address == "" || o.Port <= 0)) {
		return nil, fmt.Errorf("criu lazy-pages: %w: needs the images and work directories and either both or none of the page server's address and port", ErrBadOptions)
	}
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("criu lazy-pages: create work dir: %w", err)
	}
	logPath := filepath.Join(o.WorkDir, "lazy-pages.log")
	_ = os.Remove(logPath)
	_ = os.Remove(filepath.Join(o.WorkDir, lazyPagesSocket)) // a dead daemon's
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	defer r.Close()
	d.Prepare(ctx)
	args := []string{"lazy-pages"}
	if !local {
		args = append(args, "--page-server", "--address", o.Address, "--port", strconv.Itoa(o.Port))
	}
	args = append(args, "-D", o.ImagesDir, "-W", o.WorkDir, "-o", "lazy-pages.log", "-v4", "--status-fd", "3")
	cmd := exec.Command(d.bin.Path, args...)
	cmd.ExtraFiles = []*os.File{w}
	preload, err := d.preloadLib()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	if preload != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, preload)
		cmd.Env = append(os.Environ(), "LD_PRELOAD=/proc/self/fd/4")
	}
	err = nsrun.InNetNSPath(o.NetNSPath, cmd.Start)
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	lp := &LazyPages{cmd: cmd, done: make(chan struct{}), logPath: logPath}
	go func() {
		werr := cmd.Wait()
		if werr != nil {
			lp.err = &Error{Op: "lazy-pages", Line: FirstErrorLine(logPath), LogPath: logPath, Err: werr}
		}
		close(lp.done)
	}()
	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := r.Read(b) // EOF when the daemon dies first
		ready <- err
	}()
	select {
	case err := <-ready:
		if err == nil {
			return lp, nil
		}
		<-lp.done
		if lp.err == nil {
			lp.err = errors.New("criu lazy-pages: ended before it was ready")
		}
		return nil, lp.err
	case <-ctx.Done():
		lp.Kill()
		return nil, fmt.Errorf("criu lazy-pages: %w", context.Cause(ctx))
	}
}

// Pid is the daemon's PID.
func (l *LazyPages) Pid() int { return l.cmd.Process.Pid }

// Done is closed when the daemon has ended: with every page delivered when
// Err is nil.
func (l *LazyPages) Done() <-chan struct{} { return l.done }

// Err is how the daemon ended (the first Error line of its log, and the log's
// path); call it after Done.
func (l *LazyPages) Err() error { return l.err }

// LogPath is the daemon's log.
func (l *LazyPages) LogPath() string { return l.logPath }

// Kill ends the daemon and waits until it is reaped.
func (l *LazyPages) Kill() {
	_ = l.cmd.Process.Kill()
	<-l.done
}

// LazyPagesSupported asks CRIU (once; the answer is cached) whether this
// kernel lets it restore pages lazily: userfaultfd with the non-cooperative
// events (FEATURE_CHECK lazy_pages).
func (d *Driver) LazyPagesSupported(ctx context.Context) (bool, error) {
	d.lazyOnce.Do(func() {
		s, err := startSwrk(d.bin.Path, "", "", nil)
		if err != nil {
			d.lazyErr = fmt.Errorf("criu feature check: %w", err)
			return
		}
		resp, err := s.call(ctx, &rpc.CriuReq{Type: rpc.CriuReqType_FEATURE_CHECK.Enum(),
			Features: &rpc.CriuFeatures{LazyPages: proto.Bool(true)}}, nil)
		if err != nil {
			d.lazyErr = fmt.Errorf("criu feature check: %w", err)
			return
		}
		d.lazy = resp.GetFeatures().GetLazyPages()
	})
	return d.lazy, d.lazyErr
}
