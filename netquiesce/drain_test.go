package netquiesce

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// nsPath names an open namespace handle for a child process.
func nsPath(n *Net) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(n.NS())) }

// byLocal finds the socket with the given local address.
func byLocal(ss []TCPSocket, local string) (TCPSocket, bool) {
	for _, s := range ss {
		if s.Local.String() == local {
			return s, true
		}
	}
	return TCPSocket{}, false
}

// TestDrainFrozenReceiver: the receiver's cgroup is frozen, the sender writes
// more than fits in flight. Its kernel still ACKs, so the drain ends as soon
// as nothing is unacknowledged, and every written byte is accounted for in the
// sender's send queue or the receiver's receive queue.
func TestDrainFrozenReceiver(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	a, b := newPair(t)
	cg := newTestCgroup(t)
	_, addr := startEchoHelper(t, cg, nsPath(b), "198.18.0.2:0")
	if err := tcpRoundTrip(a, addr, 5*time.Second); err != nil {
		t.Fatalf("tcp to helper: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialIn(ctx, a, "tcp4", addr)
	must(t, err)
	defer conn.Close()
	// Let the helper accept before it is frozen.
	if _, err := conn.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := readFull(conn, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	freezeCgroup(t, cg, true)

	// Write more than the receiver's window: until the receiver advertises
	// a closed window and the sender holds bytes it cannot send. A deadline
	// only ends each write that would block, the kernel says when to stop.
	var written int
	buf := make([]byte, 64<<10)
	waitFor(t, "closed receive window with bytes left to send", func() bool {
		must(t, conn.SetWriteDeadline(time.Now().Add(50*time.Millisecond)))
		k, err := conn.Write(buf)
		written += k
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
		info := tcpInfo(t, conn)
		return info.Snd_wnd == 0 && info.Notsent_bytes > 0
	})

	rep, err := Drain(ctx, DrainTarget{Net: a}, DrainOptions{})
	if err != nil {
		t.Fatalf("Drain sender: %v", err)
	}
	local := conn.LocalAddr().String()
	snd, ok := byLocal(rep.Sockets, local)
	if !ok {
		t.Fatalf("sender socket %s not in report %v", local, rep.Sockets)
	}
	if !snd.Quiet() || snd.Unacked != 0 {
		t.Fatalf("Drain returned with unacked data: %v", snd)
	}
	rcvSockets, err := ListTCP(b, cg)
	must(t, err)
	var rcv TCPSocket
	for _, s := range rcvSockets {
		if s.Remote.String() == local && s.Local.String() == addr {
			rcv, ok = s, true
		}
	}
	if !ok {
		t.Fatalf("receiver sockets in cgroup = %v, want the peer of %s", rcvSockets, local)
	}
	t.Logf("drained in %v after %d polls; wrote %d B; sender %v; receiver %v",
		rep.Elapsed, rep.Polls, written, snd, rcv)
	if got := int(snd.SendQueue) + int(rcv.RecvQueue); got != written {
		t.Fatalf("sender sendq %d + receiver recvq %d = %d, want the %d bytes written",
			snd.SendQueue, rcv.RecvQueue, got, written)
	}
	if rcv.RecvQueue == 0 || snd.SendQueue == 0 {
		t.Fatalf("expected bytes queued on both sides (window full): %v / %v", snd, rcv)
	}
	if rep.Elapsed > 2*time.Second {
		t.Fatalf("drain took %v with an ACKing peer", rep.Elapsed)
	}
	// Another cgroup owns none of these sockets.
	other, err := ListTCP(b, newTestCgroup(t))
	must(t, err)
	if len(other) != 0 {
		t.Fatalf("empty cgroup lists sockets: %v", other)
	}
	freezeCgroup(t, cg, false)
}

// TestDrainBlackholedPeer: the peer drops everything, so sent data is never
// acknowledged and the drain fails at the deadline naming the socket.
func TestDrainBlackholedPeer(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	a, b := newPair(t)
	serveEcho(listenIn(t, b, "tcp4", "198.18.0.2:7000").(net.Listener))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialIn(ctx, a, "tcp4", "198.18.0.2:7000")
	must(t, err)
	defer conn.Close()

	hole, err := Attach(Target{Net: b, Interface: "eth0"}, Options{Mode: ModeTCX})
	must(t, err)
	t.Cleanup(func() { hole.Close() })
	_, err = hole.Lock()
	must(t, err)
	_, err = conn.Write(make([]byte, 10000))
	must(t, err)

	dctx, dcancel := context.WithTimeout(context.Background(), time.Second)
	defer dcancel()
	rep, err := Drain(dctx, DrainTarget{Net: a}, DrainOptions{})
	var te *DrainTimeoutError
	if !errors.As(err, &te) || !errors.Is(err, ErrDrainTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain = %v, want a DrainTimeoutError", err)
	}
	tuple := conn.LocalAddr().String() + " -> 198.18.0.2:7000"
	if !strings.Contains(err.Error(), tuple) {
		t.Fatalf("error does not name %s: %v", tuple, err)
	}
	if len(te.Pending) != 1 || te.Pending[0].Unacked != 10000 {
		t.Fatalf("pending = %v, want one socket with 10000 unacked bytes", te.Pending)
	}
	t.Logf("%v (polls %d)", err, rep.Polls)

	// Drain again while still black-holed, and unlock under it: it must
	// wait, then return once the retransmitted data is acknowledged. The
	// retransmission comes at the next back-off of the sender's timer.
	base2, cancel2 := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel2()
	ctx2 := newPollCountingCtx(base2, 5)
	type result struct {
		rep DrainReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := Drain(ctx2, DrainTarget{Net: a}, DrainOptions{})
		done <- result{r, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("Drain returned while the peer was black-holed: %v %v", r.rep.Sockets, r.err)
	case <-ctx2.reached:
		// Five polls found the socket busy, and Drain waits on.
	}
	_, err = hole.Unlock()
	must(t, err)
	unlocked := time.Now()
	r := <-done
	if r.err != nil {
		t.Fatalf("Drain after unlock: %v", r.err)
	}
	if s, ok := byLocal(r.rep.Sockets, conn.LocalAddr().String()); !ok || !s.Quiet() {
		t.Fatalf("drained report lacks a quiet sender socket: %v", r.rep.Sockets)
	}
	t.Logf("drain waited %v in total, %v after unlock (%d polls)", r.rep.Elapsed, time.Since(unlocked), r.rep.Polls)
}

// pollCountingCtx counts the calls to Done. Drain consults its context
// after every poll that found a socket with un-acknowledged data, before it
// waits to poll again; reached closes at the n-th call.
type pollCountingCtx struct {
	context.Context
	calls   atomic.Int32
	n       int32
	reached chan struct{}
}

func newPollCountingCtx(ctx context.Context, n int32) *pollCountingCtx {
	return &pollCountingCtx{Context: ctx, n: n, reached: make(chan struct{})}
}

func (c *pollCountingCtx) Done() <-chan struct{} {
	if c.calls.Add(1) == c.n {
		close(c.reached)
	}
	return c.Context.Done()
}

// TestDrainByCgroupRootNamespace: a job without its own network namespace is
// drained by cgroup: only its sockets are listed.
func TestDrainByCgroupRootNamespace(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	cg := newTestCgroup(t)
	_, addr := startEchoHelper(t, cg, "", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialIn(ctx, nil, "tcp4", addr)
	must(t, err)
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := readFull(conn, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	rep, err := Drain(ctx, DrainTarget{Cgroup: cg}, DrainOptions{})
	must(t, err)
	if len(rep.Sockets) != 1 || rep.Sockets[0].Local.String() != addr ||
		rep.Sockets[0].Remote.String() != conn.LocalAddr().String() {
		t.Fatalf("cgroup drain listed %v, want only the helper's end of %s", rep.Sockets, addr)
	}
}

func TestParseDiagMsg(t *testing.T) {
	ne := binary.NativeEndian
	msg := func(wqueue, rqueue, notsent, unackedSegs uint32, cgid uint64) []byte {
		b := make([]byte, 72)
		b[0], b[1] = unix.AF_INET, 1
		binary.BigEndian.PutUint16(b[4:], 40000)
		binary.BigEndian.PutUint16(b[6:], 7000)
		copy(b[8:], []byte{198, 18, 0, 1})
		copy(b[24:], []byte{198, 18, 0, 2})
		ne.PutUint32(b[56:], rqueue)
		ne.PutUint32(b[60:], wqueue)
		var info unix.TCPInfo
		info.Unacked, info.Notsent_bytes = unackedSegs, notsent
		raw := unsafe.Slice((*byte)(unsafe.Pointer(&info)), unix.SizeofTCPInfo)
		attr := make([]byte, 4+len(raw))
		ne.PutUint16(attr[0:], uint16(len(attr)))
		ne.PutUint16(attr[2:], inetDiagInfo)
		copy(attr[4:], raw)
		b = append(b, attr...)
		cga := make([]byte, 12)
		ne.PutUint16(cga[0:], 12)
		ne.PutUint16(cga[2:], inetDiagCgroupID)
		ne.PutUint64(cga[4:], cgid)
		return append(b, cga...)
	}
	tests := []struct {
		name                       string
		wq, rq, notsent, segs      uint32
		wantUnacked, wantSendQueue uint32
		quiet                      bool
	}{
		{"idle", 0, 0, 0, 0, 0, 0, true},
		{"in flight", 3000, 0, 0, 3, 3000, 0, false},
		{"window full", 50000, 0, 50000, 0, 0, 50000, true},
		{"both", 50000, 10, 20000, 10, 30000, 20000, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseDiagMsg(msg(tc.wq, tc.rq, tc.notsent, tc.segs, 42))
			must(t, err)
			if s.Unacked != tc.wantUnacked || s.SendQueue != tc.wantSendQueue || s.RecvQueue != tc.rq ||
				s.Quiet() != tc.quiet || s.CgroupID != 42 || s.State != "ESTABLISHED" ||
				s.Tuple() != "198.18.0.1:40000 -> 198.18.0.2:7000" {
				t.Fatalf("parsed %+v", s)
			}
		})
	}
	if _, err := parseDiagMsg(make([]byte, 10)); err == nil {
		t.Fatal("short message parsed")
	}
}
