package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/internal/nsrun"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// Post-copy migration, the shim's side (docs/protocol.md, "Post-copy
// migration"). The source dumps lazily: CRIU keeps the tree's private memory
// and serves it from a page server that listens inside the job-node's own
// network namespace, on loopback, which the job-node's lock (on the host end
// of its veth) does not touch. The shim relays it onto the host's address,
// the only address the destination can reach: the job-node's own address is
// locked, and soon lives on the destination. The destination runs CRIU's
// lazy-pages daemon in its host's namespace and restores through it; the
// job-node runs as soon as it is thawed, and the daemon fetches the pages it
// touches first, then every other one.

// PostCopy implements agentapi.PostCopier: CRIU says it can restore pages
// lazily here (userfaultfd). The answer is cached.
func (a *Agent) PostCopy() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ok, err := a.drv.LazyPagesSupported(ctx)
	if err != nil {
		a.log.Warn("post-copy migration unavailable on this host: CRIU's feature check failed", "err", err)
		return false
	}
	if !ok {
		a.log.Warn("post-copy migration unavailable on this host: CRIU cannot restore pages lazily (no userfaultfd with non-cooperative events)")
	}
	return ok
}

// privateMemory is the resident anonymous memory of pids (RssAnon): what a
// lazy dump leaves out of the images.
func privateMemory(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			v, ok := bytes.CutPrefix(sc.Bytes(), []byte("RssAnon:"))
			if !ok {
				continue
			}
			f := bytes.Fields(v)
			if len(f) > 0 {
				if kb, err := strconv.ParseInt(string(f[0]), 10, 64); err == nil {
					total += kb << 10
				}
			}
			break
		}
	}
	return total
}

// hostNetNSPath is the namespace file of this host's network namespace, ""
// for the shim's own.
func (a *Agent) hostNetNSPath() string {
	if a.cfg.HostNetNS == "" {
		return ""
	}
	return filepath.Join(netquiesce.NetnsDir, a.cfg.HostNetNS)
}

// hostAddr is this host's address, where other hosts reach it: the first
// IPv4 address of the bridge the job-nodes join.
func (a *Agent) hostAddr() (net.IP, error) {
	hn, err := a.hostNet()
	if err != nil {
		return nil, err
	}
	defer hn.Close()
	addrs, err := hn.Addrs(a.cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", a.cfg.Bridge, err)
	}
	for _, ad := range addrs {
		if ip := ad.IP.To4(); ip != nil && !ip.IsLoopback() {
			return ip, nil
		}
	}
	return nil, fmt.Errorf("bridge %s of host %s has no IPv4 address for the page server of a post-copy migration", a.cfg.Bridge, a.cfg.Host)
}

// freeLoopbackPort picks a TCP port free on the loopback of the namespace
// at path. The job-node is frozen: nothing of it can take the port before
// CRIU's page server does.
func freeLoopbackPort(path string) (int, error) {
	var port int
	err := nsrun.InNetNSPath(path, func() error {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = ln.Addr().(*net.TCPAddr).Port
		return ln.Close()
	})
	return port, err
}

// pageServer is a source job-node's lazy dump: CRIU serving its pages, and
// the shim's relay from the host's address to CRIU's loopback port.
type pageServer struct {
	serving *criu.Serving
	ln      net.Listener
	addr    string // host:port, for the destination

	mu      sync.Mutex
	conns   []net.Conn
	stopped bool
	wg      sync.WaitGroup
	// hungUp is closed when a destination's connection has ended (its
	// lazy-pages daemon exits once it has every page): CRIU is about to
	// end too.
	hungUp   chan struct{}
	hangOnce sync.Once
}

// servePages relays connections to addr on the host's address to CRIU's
// page server on port inside n's namespace, until CRIU ends or stop.
func (a *Agent) servePages(n *node, s *criu.Serving, port int) (*pageServer, error) {
	ip, err := a.hostAddr()
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	if err := nsrun.InNetNSPath(a.hostNetNSPath(), func() error {
		ln, err = net.Listen("tcp4", net.JoinHostPort(ip.String(), "0"))
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen for the destination's lazy-pages daemon: %w", err)
	}
	ps := &pageServer{serving: s, ln: ln, addr: net.JoinHostPort(ip.String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)),
		hungUp: make(chan struct{})}
	netns := n.sb.NetNSPath()
	log := a.log.With("job", n.job, "node", n.spec.Name, "page_server", ps.addr)
	ps.wg.Add(2)
	go func() {
		defer ps.wg.Done()
		<-s.Done()
		ln.Close()
	}()
	go func() {
		defer ps.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !ps.track(c) {
				return
			}
			var up net.Conn
			err = nsrun.InNetNSPath(netns, func() error {
				var err error
				up, err = net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
				return err
			})
			if err != nil {
				log.Error("reach CRIU's page server", "err", err)
				c.Close()
				continue
			}
			if !ps.track(up) {
				return
			}
			log.Info("relaying the destination's page requests to CRIU", "from", c.RemoteAddr())
			ps.wg.Add(2)
			go func() {
				ps.pipe(up, c)
				ps.hangOnce.Do(func() { close(ps.hungUp) })
			}()
			go ps.pipe(c, up)
		}
	}()
	return ps, nil
}

// track keeps c to close at stop; false (and c closed) once stopped.
func (ps *pageServer) track(c net.Conn) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.stopped {
		c.Close()
		return false
	}
	ps.conns = append(ps.conns, c)
	return true
}

// pipe copies one direction and passes the end of it on: CRIU sees the
// destination close, and the destination sees CRIU go.
func (ps *pageServer) pipe(dst, src net.Conn) {
	defer ps.wg.Done()
	_, _ = io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
}

// stop ends the page server: CRIU killed if it still serves, the relay and
// its connections closed.
func (ps *pageServer) stop() {
	ps.serving.Stop()
	ps.ln.Close()
	ps.mu.Lock()
	ps.stopped = true
	for _, c := range ps.conns {
		c.Close()
	}
	ps.mu.Unlock()
	ps.wg.Wait()
}

// stopServing ends n's page server, if it has one, and says why in the log.
func (a *Agent) stopServing(n *node, why string) {
	n.mu.Lock()
	ps := n.pages
	n.pages = nil
	n.mu.Unlock()
	if ps == nil {
		return
	}
	select {
	case <-ps.serving.Done():
	case <-ps.hungUp:
		// The destination's daemon went, normally with every page (the
		// coordinator destroys the source only then): CRIU ends a moment
		// later, as it sees the connection end.
		select {
		case <-ps.serving.Done():
		case <-time.After(pageServerGrace):
			a.log.Warn("the page server of a post-copy migration did not end after the destination hung up; stopping it", "job", n.job, "node", n.spec.Name, "why", why)
		}
	default:
		a.log.Warn("stopping the page server of a post-copy migration before the destination had every page", "job", n.job, "node", n.spec.Name, "why", why)
	}
	ps.stop()
}

// pageServerGrace is how long a page server whose destination hung up may
// take to end on its own.
const pageServerGrace = 2 * time.Second

// pagePull is a destination job-node's lazy-pages daemon.
type pagePull struct {
	lp    *criu.LazyPages
	done  chan struct{}
	err   error
	start time.Time
}

// watchPull waits for n's lazy-pages daemon. When it fails, the job-node is
// killed at once: the pages it has not got are gone with the source, and a
// task whose userfaultfd closed would read zeros where its memory was.
func (a *Agent) watchPull(n *node, lp *criu.LazyPages) *pagePull {
	p := &pagePull{lp: lp, done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(p.done)
		<-lp.Done()
		if err := lp.Err(); err != nil {
			kerr := n.sb.Cgroup().Kill(context.Background())
			p.err = fmt.Errorf("the pages of %s/%s stopped coming from the source of its post-copy migration, so it was killed: it cannot run on without them: %w", n.job, n.spec.Name, err)
			a.log.Error("post-copy migration lost its source with pages in flight; killed the job-node", "job", n.job, "node", n.spec.Name, "err", err, "kill_err", kerr, "log", lp.LogPath())
			return
		}
		a.log.Info("post-copy migration: every page arrived", "job", n.job, "node", n.spec.Name, "elapsed", time.Since(p.start))
		n.mu.Lock()
		n.pulling = false
		n.mu.Unlock()
		if err := a.saveRecord(n); err != nil {
			a.log.Warn("job-node has every page, but its record still says it is pulling", "job", n.job, "node", n.spec.Name, "err", err)
		}
	}()
	return p
}

// Pages implements agentapi.Agent.
func (a *Agent) Pages(ctx context.Context, ref agentapi.NodeRef) error {
	n, err := a.get(ref)
	if err != nil {
		return err
	}
	n.mu.Lock()
	p := n.pull
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("wait for the pages of %s/%s: %w", ref.Job, ref.Node, ctx.Err())
	}
}

// pendingPull is a lazy-pages daemon being started (startPullAsync).
type pendingPull struct {
	done  chan struct{}
	lp    *criu.LazyPages
	err   error
	stall *pageStall // fault.StallPagesInFlight, nil when off
}

// wait returns the daemon once it listens, or why it could not start.
func (p *pendingPull) wait() (*criu.LazyPages, error) {
	<-p.done
	return p.lp, p.err
}

// startPullAsync is startPull in the background, so that the daemon gets
// ready while the restore does its other work.
func (a *Agent) startPullAsync(ctx context.Context, job, node, addr, images, work string) *pendingPull {
	p := &pendingPull{done: make(chan struct{})}
	if p.stall = a.stallPages(job, node, addr); p.stall != nil {
		addr = p.stall.Addr()
	}
	go func() {
		defer close(p.done)
		p.lp, p.err = a.startPull(ctx, addr, images, work)
		if st := p.stall; st != nil {
			if p.err != nil {
				st.close()
				return
			}
			go func() {
				<-p.lp.Done()
				st.close()
			}()
		}
	}()
	return p
}

// startPull starts the lazy-pages daemon of a post-copy restore from the
// page server at addr (host:port), in this host's namespace.
func (a *Agent) startPull(ctx context.Context, addr, images, work string) (*criu.LazyPages, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: page server %q: %v", agentapi.ErrInvalid, addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("%w: page server %q is no IP:port", agentapi.ErrInvalid, addr)
	}
	return a.drv.StartLazyPages(ctx, criu.LazyPagesOptions{ImagesDir: images, WorkDir: work, Address: host, Port: port, NetNSPath: a.hostNetNSPath()})
}

// errPostCopyLeft explains the destruction of a job-node found in the middle
// of a post-copy migration by a shim that adopts it.
var errPostCopyLeft = errors.New("it was in the middle of a post-copy migration when its shim died, which that migration cannot survive")
