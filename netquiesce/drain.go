package netquiesce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// ErrDrainTimeout is wrapped by the error Drain returns when sockets still hold
// un-acknowledged data at the deadline; errors.As gives a *DrainTimeoutError.
var ErrDrainTimeout = errors.New("tcp drain timed out")

// DrainTarget says whose sockets to drain: a network namespace (Net, nil for
// the caller's) and optionally only those sockets created in a cgroup v2
// directory or below it (for jobs without a network namespace of their own).
type DrainTarget struct {
	Net    *Net
	Cgroup string
}

// DrainOptions tune the polling. The zero value polls first after 1ms and
// doubles up to 5ms: what a drain waits for longest is a peer's delayed
// ACK (40 ms on a fast link, Linux's minimum; up to 200 ms), and a longer
// interval only adds to that wait (up to 32 ms more with 50 ms); a poll is
// one sock_diag dump of the namespace.
type DrainOptions struct {
	MinInterval time.Duration
	MaxInterval time.Duration
	Logger      *slog.Logger
}

// DrainReport is the state of every socket when the drain ended.
type DrainReport struct {
	Sockets []TCPSocket
	Elapsed time.Duration
	Polls   int
}

// DrainTimeoutError names the sockets that still had un-acknowledged data.
type DrainTimeoutError struct {
	Pending []TCPSocket
	Report  DrainReport
	Cause   error // the context's error
}

func (e *DrainTimeoutError) Error() string {
	parts := make([]string, len(e.Pending))
	for i, s := range e.Pending {
		parts[i] = s.String()
	}
	return fmt.Sprintf("%v after %v: %d socket(s) still have un-acknowledged data: %s; "+
		"the peer is not acknowledging (down, frozen kernel, or its traffic is dropped)",
		ErrDrainTimeout, e.Report.Elapsed.Round(time.Millisecond), len(e.Pending), strings.Join(parts, "; "))
}

func (e *DrainTimeoutError) Unwrap() []error { return []error{ErrDrainTimeout, e.Cause} }

// Drain polls the target's TCP sockets over sock_diag, with exponential
// back-off, until no socket has a sent byte that is not acknowledged, and
// reports every socket's send queue, receive queue and unacked bytes and the
// time it took. Bytes still queued (unsent or unread) are fine: they sit in
// socket queues that a checkpoint saves. The deadline is the context's; at the
// deadline the error is a *DrainTimeoutError naming each busy socket.
func Drain(ctx context.Context, t DrainTarget, opts DrainOptions) (DrainReport, error) {
	start := time.Now()
	minI, maxI := opts.MinInterval, opts.MaxInterval
	if minI <= 0 {
		minI = time.Millisecond
	}
	if maxI < minI {
		maxI = max(5*time.Millisecond, minI)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var ids map[uint64]bool
	if t.Cgroup != "" {
		var err error
		if ids, err = cgroupIDs(t.Cgroup); err != nil {
			return DrainReport{}, fmt.Errorf("drain: %w", err)
		}
	}
	c, err := openDiag(t.Net)
	if err != nil {
		return DrainReport{}, fmt.Errorf("drain: %w", err)
	}
	defer c.Close()

	var rep DrainReport
	interval := minI
	for {
		ss, err := c.list(ids)
		if err != nil {
			return rep, fmt.Errorf("drain: %w", err)
		}
		rep.Polls++
		rep.Sockets = ss
		rep.Elapsed = time.Since(start)
		var pending []TCPSocket
		for _, s := range ss {
			if !s.Quiet() {
				pending = append(pending, s)
			}
		}
		if len(pending) == 0 {
			log.Debug("tcp drained", "sockets", len(ss), "elapsed", rep.Elapsed, "polls", rep.Polls)
			return rep, nil
		}
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			rep.Elapsed = time.Since(start)
			return rep, &DrainTimeoutError{Pending: pending, Report: rep, Cause: ctx.Err()}
		case <-timer.C:
		}
		interval = min(interval*2, maxI)
	}
}
