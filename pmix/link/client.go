package link

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/pmix/hostmsg"
)

// ErrRemote wraps an error the shim (or the coordinator behind it) returned.
var ErrRemote = errors.New("shim")

// Handler is what pmixd does when its shim asks: the pmix.Daemon implements it.
type Handler interface {
	// Prepare raises the checkpoint event to the ranks and waits for them, bounded.
	Prepare(ctx context.Context, checkpoint string, timeout time.Duration) (hostmsg.PrepareResult, error)
	// Restored tells the ranks the job-node was restored from checkpoint.
	Restored(ctx context.Context, checkpoint string) error
	// ServeDirectModex returns a local rank's modex blob for another job-node.
	ServeDirectModex(ctx context.Context, rank int) ([]byte, error)
	// Terminate ends the local ranks (another job-node failed, or the job is stopped).
	Terminate(cause error)
}

// Config configures a Client.
type Config struct {
	Path string // the link socket, e.g. /run/torpor/sandboxes/<job>/<node>/link.sock
	Job  string
	Node int
	// Redial is the pause between connection attempts; 0 means 50ms.
	Redial time.Duration
	Logger *slog.Logger
}

// Client is pmixd's end of the link. It implements pmix.Upstream: calls made
// while the link is down wait, and calls in flight when it went down are sent
// again, with the same content, on the next connection.
type Client struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	w       *wconn // the live connection, nil while the link is down
	gen     uint64 // connections made so far (the next hello's Generation)
	next    uint64
	pending map[uint64]*pendingCall
}

type pendingCall struct {
	m  message
	ch chan message
}

// NewClient returns a client for cfg; Run connects it.
func NewClient(cfg Config) *Client {
	if cfg.Redial <= 0 {
		cfg.Redial = 50 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Client{cfg: cfg, log: log.With("link", cfg.Path), pending: map[uint64]*pendingCall{}}
}

// Generation is the number of connections made so far.
func (c *Client) Generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// Connected reports whether the link is up now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w != nil
}

// Run keeps the link up until ctx ends: it dials the socket every Redial
// until a shim answers, says hello, and serves the connection; after a
// prepare, or when the shim goes away, it closes the connection and dials
// again. It returns ctx's error.
func (c *Client) Run(ctx context.Context, h Handler) error {
	var failedSince time.Time
	var lastLog time.Time
	for {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", c.cfg.Path)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			now := time.Now()
			if failedSince.IsZero() {
				failedSince = now
			}
			if now.Sub(lastLog) >= 10*time.Second {
				c.log.Debug("link down, dialling", "since", failedSince.Format(time.RFC3339), "err", err)
				lastLog = now
			}
			pause(c.cfg.Redial)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			continue
		}
		failedSince, lastLog = time.Time{}, time.Time{}
		if err := c.serve(ctx, conn, h); err != nil && ctx.Err() == nil {
			c.log.Info("link closed", "err", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// serve runs one connection: hello, welcome, resend, then messages until the
// connection ends or pmixd parks it after a prepare.
func (c *Client) serve(ctx context.Context, conn net.Conn, h Handler) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	w := &wconn{c: conn}
	c.mu.Lock()
	gen := c.gen
	c.gen++
	c.mu.Unlock()
	hello := Hello{Job: c.cfg.Job, Node: c.cfg.Node, PID: os.Getpid(), Generation: gen}
	if err := w.send(message{Type: typeHello, Hello: &hello}); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := readFrame(conn)
	if err != nil {
		return fmt.Errorf("wait for the shim's welcome: %w", err)
	}
	if m.Type != typeWelcome || m.Welcome == nil {
		return fmt.Errorf("wait for the shim's welcome: got a %q message", m.Type)
	}
	_ = conn.SetReadDeadline(time.Time{})
	c.log.Info("link up", "generation", gen, "restored_from", m.Welcome.RestoredFrom)

	// Publish the connection and resend what is in flight, in order.
	c.mu.Lock()
	c.w = w
	resend := make([]message, 0, len(c.pending))
	for _, p := range c.pending {
		resend = append(resend, p.m)
	}
	c.mu.Unlock()
	defer c.down(w)
	slices.SortFunc(resend, func(a, b message) int { return cmp.Compare(a.ID, b.ID) })
	for _, rm := range resend {
		if err := w.send(rm); err != nil {
			return err
		}
	}
	if len(resend) > 0 {
		c.log.Info("resent calls in flight", "count", len(resend))
	}
	if from := m.Welcome.RestoredFrom; from != "" {
		go func() {
			if err := h.Restored(ctx, from); err != nil {
				c.log.Warn("tell ranks about the restore", "checkpoint", from, "err", err)
			}
		}()
	}

	for {
		m, err := readFrame(conn)
		if err != nil {
			return err
		}
		switch m.Type {
		case typeReply:
			c.mu.Lock()
			p := c.pending[m.ID]
			delete(c.pending, m.ID)
			c.mu.Unlock()
			if p != nil {
				p.ch <- m
			}
		case typePrepare:
			if m.Prepare == nil {
				return fmt.Errorf("prepare message without a request")
			}
			go c.prepare(ctx, w, h, m.ID, *m.Prepare)
		case typeServe:
			go func() {
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				data, err := h.ServeDirectModex(sctx, m.Rank)
				reply := message{Type: typeServed, ID: m.ID, Data: data}
				if err != nil {
					reply.Err = err.Error()
				}
				_ = w.send(reply)
			}()
		case typeTerminate:
			c.log.Warn("shim ends the job", "reason", m.Reason)
			h.Terminate(fmt.Errorf("%w: %s", ErrRemote, m.Reason))
		default:
			c.log.Warn("ignoring unknown link message", "type", m.Type)
		}
	}
}

// prepare runs the daemon's prepare, answers, and parks the link: pmixd must
// hold no connection to the shim while CRIU dumps it.
func (c *Client) prepare(ctx context.Context, w *wconn, h Handler, id uint64, req prepareReq) {
	res, err := h.Prepare(ctx, req.Checkpoint, time.Duration(req.TimeoutMS)*time.Millisecond)
	reply := message{Type: typePrepared, ID: id, Result: &res}
	if err != nil {
		reply.Err = err.Error()
	}
	if serr := w.send(reply); serr != nil {
		c.log.Warn("answer prepare", "checkpoint", req.Checkpoint, "err", serr)
	}
	c.log.Info("prepared; closing the link until the shim listens again", "checkpoint", req.Checkpoint,
		"registered", res.Registered, "completed", res.Completed)
	c.down(w)
	w.c.Close()
}

// down marks w's connection as gone (once).
func (c *Client) down(w *wconn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == w {
		c.w = nil
	}
}

// pause sleeps d in the kernel (nanosleep, relative). A Go timer would not
// do here: the re-dial pause spans the dump and the restore, and a Go timer
// armed on one host's CLOCK_MONOTONIC fires late by the clock difference on
// another host whose clock is behind (unless the sandbox has a time
// namespace). An interrupted nanosleep (the restore) returns early: fine.
func pause(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_ = unix.Nanosleep(&ts, nil)
}

// call sends m and waits for its reply, across reconnects.
func (c *Client) call(ctx context.Context, m message) (message, error) {
	ch := make(chan message, 1)
	c.mu.Lock()
	c.next++
	m.ID = c.next
	c.pending[m.ID] = &pendingCall{m: m, ch: ch}
	w := c.w
	c.mu.Unlock()
	if w != nil {
		// A failed write is resent on the next connection.
		_ = w.send(m)
	}
	select {
	case r := <-ch:
		if r.Err != "" {
			return r, fmt.Errorf("%w: %s", ErrRemote, r.Err)
		}
		return r, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, m.ID)
		c.mu.Unlock()
		return message{}, ctx.Err()
	}
}

// Fence implements pmix.Upstream.
func (c *Client) Fence(ctx context.Context, req hostmsg.FenceRequest) ([]byte, error) {
	r, err := c.call(ctx, message{Type: typeFence, Fence: &req})
	if err != nil {
		return nil, fmt.Errorf("fence through the link: %w", err)
	}
	return r.Data, nil
}

// DirectModex implements pmix.Upstream.
func (c *Client) DirectModex(ctx context.Context, req hostmsg.ModexRequest) ([]byte, error) {
	r, err := c.call(ctx, message{Type: typeModex, Modex: &req})
	if err != nil {
		return nil, fmt.Errorf("direct modex through the link: %w", err)
	}
	return r.Data, nil
}

// Failed implements pmix.Upstream.
func (c *Client) Failed(ctx context.Context, f hostmsg.Failure) error {
	wf := &failure{Job: f.Job, Node: f.Node, Rank: f.Rank, Code: f.Code}
	if f.Err != nil {
		wf.Err = f.Err.Error()
	}
	if _, err := c.call(ctx, message{Type: typeFailed, Failure: wf}); err != nil {
		return fmt.Errorf("report failure through the link: %w", err)
	}
	return nil
}
