package link

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/pmix/hostmsg"
)

// Errors of the shim side.
var (
	ErrClosed       = errors.New("link server closed")
	ErrLinkDropped  = errors.New("pmixd dropped the link before answering")
	ErrNotListening = errors.New("link server is not listening: call Listen first")
	ErrPathTooLong  = errors.New("link socket path too long for a unix socket (at most 107 bytes): use a shorter directory or job id")
)

// maxPath is the longest unix socket path (sun_path is 108 bytes with its NUL).
const maxPath = 107

// Forwarder is what the shim does with pmixd's requests: send them on to the
// coordinator. Calls run on their own goroutine; ctx ends when the link
// connection they came on closes (pmixd sends them again after re-dialling).
type Forwarder interface {
	// Fence returns the concatenated contributions of every job-node in
	// req.Nodes. A repeated (Job, Signature, Seq, Node) is the same
	// contribution sent again after a reconnect.
	Fence(ctx context.Context, req hostmsg.FenceRequest) ([]byte, error)
	// DirectModex returns rank req.Rank's modex blob from job-node req.Node
	// (whose shim answers with Server.ServeDirectModex).
	DirectModex(ctx context.Context, req hostmsg.ModexRequest) ([]byte, error)
	// Failed reports that pmixd is ending the job because a local rank failed.
	Failed(ctx context.Context, f hostmsg.Failure) error
}

// Server is the shim's end of one job-node's link.
type Server struct {
	fw  Forwarder
	log *slog.Logger

	mu           sync.Mutex
	path         string
	ln           net.Listener // nil while not listening (after Prepare, before Resume)
	owner        *[2]int      // uid and gid the socket belongs to; nil: root's
	cur          *sconn       // the live connection (after hello)
	restoredFrom string
	changed      chan struct{} // closed and replaced when cur changes
	closed       bool
	next         uint64
	waits        map[uint64]chan message // prepare and serve answers by id
	wg           sync.WaitGroup
}

// sconn is one accepted connection.
type sconn struct {
	w      *wconn
	hello  Hello
	ctx    context.Context // ends when the connection does
	cancel context.CancelFunc
	done   chan struct{} // closed when the connection has ended
}

// NewServer returns a link server that forwards to fw.
func NewServer(fw Forwarder, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Server{fw: fw, log: log, changed: make(chan struct{}), waits: map[uint64]chan message{}}
}

// SetOwner makes the link socket belong to uid and gid (mode 0600) from the
// next listen on, and refuses connections from anybody but that uid and
// root: the job-node's pmixd runs as its job's owner. Call it before Listen.
func (s *Server) SetOwner(uid, gid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner = &[2]int{uid, gid}
}

// Listen listens on the unix socket path, creating its directory and
// replacing a stale socket left by a previous shim.
func (s *Server) Listen(path string) error {
	if len(path) > maxPath {
		return fmt.Errorf("listen on %s: %w", path, ErrPathTooLong)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.path = path
	return s.listenLocked()
}

func (s *Server) listenLocked() error {
	if s.ln != nil {
		return nil
	}
	if s.path == "" {
		return ErrNotListening
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		return fmt.Errorf("create link socket directory: %w", err)
	}
	if fi, err := os.Lstat(s.path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("link socket %s exists and is not a socket: remove it", s.path)
		}
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("remove stale link socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		return fmt.Errorf("listen on link socket: %w", err)
	}
	if s.owner != nil {
		// The directory is root's: nobody else can swap the socket between
		// its creation and these.
		err := os.Lchown(s.path, s.owner[0], s.owner[1])
		if err == nil {
			err = os.Chmod(s.path, 0o600)
		}
		if err != nil {
			ln.Close()
			return fmt.Errorf("give the link socket to uid %d: %w", s.owner[0], err)
		}
	}
	s.ln = ln
	s.wg.Add(1)
	go s.accept(ln)
	return nil
}

// stopListening closes the listener (unlinking the socket) so that pmixd's
// re-dials fail until Resume: a connection made then would be in the dump.
func (s *Server) stopListening() {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// Resume listens again after Prepare: call it once the job-node is running
// again without a restore (leave-running checkpoint done, or checkpoint
// abandoned). Prepare calls it itself when it fails.
func (s *Server) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.listenLocked()
}

// SetRestoredFrom makes the next hello's welcome say that the job-node was
// restored from checkpoint handle; pmixd then raises the restored event to
// its ranks. Call it before the restored tree is thawed.
func (s *Server) SetRestoredFrom(handle string) {
	s.mu.Lock()
	s.restoredFrom = handle
	s.mu.Unlock()
}

// Close stops listening and drops the connection.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	ln, cur := s.ln, s.cur
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if cur != nil {
		cur.w.c.Close()
	}
	s.wg.Wait()
	return nil
}

// checkPeer refuses a peer that is neither the owner nor root (SO_PEERCRED).
func (s *Server) checkPeer(c net.Conn) error {
	s.mu.Lock()
	owner := s.owner
	s.mu.Unlock()
	uc, ok := c.(*net.UnixConn)
	if !ok || owner == nil {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if int(cred.Uid) != owner[0] && cred.Uid != 0 {
		return fmt.Errorf("peer uid %d is not the job's owner %d", cred.Uid, owner[0])
	}
	return nil
}

func (s *Server) accept(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
		}()
	}
}

func (s *Server) serve(c net.Conn) {
	defer c.Close()
	if err := s.checkPeer(c); err != nil {
		s.log.Warn("link: refused a connection", "err", err)
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := readFrame(c)
	if err != nil || m.Type != typeHello || m.Hello == nil {
		s.log.Warn("link: no hello from the peer", "err", err, "type", m.Type)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	sc := &sconn{w: &wconn{c: c}, hello: *m.Hello, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	var calls sync.WaitGroup
	defer func() {
		cancel() // forwarded calls give up: pmixd asks again on its next connection
		s.mu.Lock()
		if s.cur == sc {
			s.cur = nil
			s.signalLocked()
		}
		s.mu.Unlock()
		calls.Wait()
		close(sc.done)
	}()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	welcome := Welcome{RestoredFrom: s.restoredFrom}
	s.restoredFrom = ""
	old := s.cur
	s.mu.Unlock()
	if old != nil {
		old.w.c.Close() // a newer pmixd connection replaces it
	}
	if err := sc.w.send(message{Type: typeWelcome, Welcome: &welcome}); err != nil {
		s.log.Warn("link: welcome", "err", err)
		return
	}
	s.mu.Lock()
	s.cur = sc
	s.signalLocked()
	s.mu.Unlock()
	s.log.Info("pmixd connected", "job", sc.hello.Job, "node", sc.hello.Node, "generation", sc.hello.Generation,
		"restored_from", welcome.RestoredFrom)

	for {
		m, err := readFrame(c)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Info("link: read", "err", err)
			}
			return
		}
		switch m.Type {
		case typeFence, typeModex, typeFailed:
			calls.Add(1)
			go func() {
				defer calls.Done()
				s.forward(sc, m)
			}()
		case typePrepared, typeServed:
			s.mu.Lock()
			ch := s.waits[m.ID]
			delete(s.waits, m.ID)
			s.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		default:
			s.log.Warn("link: ignoring unknown message", "type", m.Type)
		}
	}
}

func (s *Server) signalLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// forward runs one pmixd request through the Forwarder and replies.
func (s *Server) forward(sc *sconn, m message) {
	reply := message{Type: typeReply, ID: m.ID}
	var err error
	switch {
	case m.Type == typeFence && m.Fence != nil:
		reply.Data, err = s.fw.Fence(sc.ctx, *m.Fence)
	case m.Type == typeModex && m.Modex != nil:
		reply.Data, err = s.fw.DirectModex(sc.ctx, *m.Modex)
	case m.Type == typeFailed && m.Failure != nil:
		f := hostmsg.Failure{Job: m.Failure.Job, Node: m.Failure.Node, Rank: m.Failure.Rank, Code: m.Failure.Code}
		if m.Failure.Err != "" {
			f.Err = errors.New(m.Failure.Err)
		}
		err = s.fw.Failed(sc.ctx, f)
	default:
		err = fmt.Errorf("malformed %s request", m.Type)
	}
	if sc.ctx.Err() != nil {
		return // the connection is gone; pmixd asks again on the next one
	}
	if err != nil {
		reply.Err = err.Error()
	}
	if err := sc.w.send(reply); err != nil {
		s.log.Info("link: reply", "type", m.Type, "err", err)
	}
}

// Connected waits until pmixd is connected and returns its hello.
func (s *Server) Connected(ctx context.Context) (Hello, error) {
	sc, err := s.connected(ctx)
	if err != nil {
		return Hello{}, err
	}
	return sc.hello, nil
}

func (s *Server) connected(ctx context.Context) (*sconn, error) {
	for {
		s.mu.Lock()
		sc, ch, closed := s.cur, s.changed, s.closed
		s.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if sc != nil {
			return sc, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for pmixd to connect: %w", ctx.Err())
		}
	}
}

// request sends m on sc and waits for the answer with the same id.
func (s *Server) request(ctx context.Context, sc *sconn, m message) (message, error) {
	ch := make(chan message, 1)
	s.mu.Lock()
	s.next++
	m.ID = s.next
	s.waits[m.ID] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waits, m.ID)
		s.mu.Unlock()
	}()
	if err := sc.w.send(m); err != nil {
		return message{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-sc.done:
		select {
		case r := <-ch: // answered just before closing
			return r, nil
		default:
			return message{}, ErrLinkDropped
		}
	case <-ctx.Done():
		return message{}, ctx.Err()
	}
}

// Prepare runs the prepare phase of checkpoint on the job-node: pmixd raises
// PMIX_JCTRL_CHECKPOINT to its ranks and waits at most timeout (0: pmixd's
// default, 8s) for the ranks that opted in. Prepare stops listening first,
// and returns only once pmixd has answered and closed the link, so that
// pmixd holds no connection to the shim when it is frozen and dumped. The
// link stays down until Resume, or until a shim that restored the job-node
// listens at the same path. Ranks that did not answer in time are in the
// result's Laggards (a warning, not an error). On error it listens again.
func (s *Server) Prepare(ctx context.Context, checkpoint string, timeout time.Duration) (res hostmsg.PrepareResult, err error) {
	sc, err := s.connected(ctx)
	if err != nil {
		return res, fmt.Errorf("prepare %s: %w", checkpoint, err)
	}
	s.stopListening()
	defer func() {
		if err != nil {
			if rerr := s.Resume(); rerr != nil && !errors.Is(rerr, ErrClosed) {
				s.log.Warn("link: listen again after a failed prepare", "err", rerr)
			}
		}
	}()
	r, err := s.request(ctx, sc, message{Type: typePrepare, Prepare: &prepareReq{Checkpoint: checkpoint, TimeoutMS: timeout.Milliseconds()}})
	if err != nil {
		return res, fmt.Errorf("prepare %s on job-node %d: %w", checkpoint, sc.hello.Node, err)
	}
	if r.Result != nil {
		res = *r.Result
	}
	// pmixd closes the link after answering, whatever the answer.
	select {
	case <-sc.done:
	case <-ctx.Done():
		return res, fmt.Errorf("prepare %s: pmixd answered but did not close the link: %w", checkpoint, ctx.Err())
	}
	if r.Err != "" {
		return res, fmt.Errorf("prepare %s on job-node %d: %w: %s", checkpoint, sc.hello.Node, ErrRemote, r.Err)
	}
	if len(res.Laggards) > 0 {
		s.log.Warn("ranks did not answer the checkpoint event in time", "checkpoint", checkpoint,
			"node", sc.hello.Node, "ranks", res.Laggards)
	}
	return res, nil
}

// ServeDirectModex asks pmixd for a local rank's modex blob (for another
// job-node's DirectModex).
func (s *Server) ServeDirectModex(ctx context.Context, rank int) ([]byte, error) {
	sc, err := s.connected(ctx)
	if err != nil {
		return nil, fmt.Errorf("serve direct modex for rank %d: %w", rank, err)
	}
	r, err := s.request(ctx, sc, message{Type: typeServe, Rank: rank})
	if err != nil {
		return nil, fmt.Errorf("serve direct modex for rank %d: %w", rank, err)
	}
	if r.Err != "" {
		return nil, fmt.Errorf("serve direct modex for rank %d: %w: %s", rank, ErrRemote, r.Err)
	}
	return r.Data, nil
}

// Terminate tells pmixd to end its ranks (another job-node failed, or the
// job is being stopped). It waits for the link to be up.
func (s *Server) Terminate(ctx context.Context, reason string) error {
	sc, err := s.connected(ctx)
	if err != nil {
		return fmt.Errorf("terminate job-node: %w", err)
	}
	if err := sc.w.send(message{Type: typeTerminate, Reason: reason}); err != nil {
		return fmt.Errorf("terminate job-node %d: %w", sc.hello.Node, err)
	}
	return nil
}
