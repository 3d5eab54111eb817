package netquiesce

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/torpor-hpc/torpor/internal/nsrun"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

const streamBytes = 6 << 20

// lockScenario is the acceptance test shared by both mechanisms: fresh
// connections and UDP probes get no answer under the lock and counters rise;
// after Unlock they work; an established stream stalled by a 2-second lock
// resumes and delivers every byte.
type lockScenario struct {
	client *Net   // where the client sockets are made (nil: this namespace)
	addr   string // echo server, TCP and UDP
}

func (sc lockScenario) run(t *testing.T, lk *Lock) {
	if err := tcpRoundTrip(sc.client, sc.addr, 5*time.Second); err != nil {
		t.Fatalf("tcp before lock: %v", err)
	}
	if err := udpProbe(sc.client, sc.addr, 5*time.Second); err != nil {
		t.Fatalf("udp before lock: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialIn(ctx, sc.client, "tcp4", sc.addr)
	must(t, err)
	defer conn.Close()
	st := startStream(conn, streamBytes)
	// The stream must be flowing when the lock falls, or it stalls nothing.
	waitFor(t, "stream flowing", func() bool { return st.Received.Load() >= 256<<10 })

	if _, err := lk.Lock(); err != nil {
		t.Fatalf("Lock: %v", err)
	}
	lockedAt := time.Now()
	if _, err := lk.Lock(); err != nil || !lk.Locked() {
		t.Fatalf("second Lock: %v locked=%v", err, lk.Locked())
	}
	// Bytes already delivered to the client's socket are still read; from
	// then on nothing may move.
	st.settle(t)
	progressInLock := st.Received.Load()

	if err := tcpRoundTrip(sc.client, sc.addr, 500*time.Millisecond); err == nil {
		t.Fatal("tcp connect got an answer under lock")
	}
	if err := udpProbe(sc.client, sc.addr, 500*time.Millisecond); err == nil {
		t.Fatal("udp probe got an answer under lock")
	}
	mid, err := lk.Counters()
	must(t, err)
	if mid[Ingress][TCP].Packets == 0 || mid[Ingress][UDP].Packets == 0 {
		t.Fatalf("counters under lock do not show tcp and udp ingress drops: %v", mid)
	}
	time.Sleep(time.Until(lockedAt.Add(2 * time.Second)))
	if got := st.Received.Load(); got != progressInLock {
		t.Fatalf("stream moved under lock: %d -> %d bytes", progressInLock, got)
	}
	if progressInLock >= streamBytes {
		t.Fatalf("stream finished before the lock; the test proves nothing")
	}

	c, err := lk.Unlock()
	must(t, err)
	t.Logf("dropped during the 2 s lock: %v (stream stalled at %d of %d bytes)", c, progressInLock, streamBytes)
	if c[Ingress][TCP].Packets < mid[Ingress][TCP].Packets || c[Ingress][UDP].Packets < 1 {
		t.Fatalf("counters at unlock %v below those seen under lock %v", c, mid)
	}
	if c.Total().Bytes == 0 {
		t.Fatalf("no bytes counted: %v", c)
	}
	again, err := lk.Unlock()
	must(t, err)
	if again != c || lk.Locked() {
		t.Fatalf("second Unlock changed state: %v vs %v", again, c)
	}

	if err := tcpRoundTrip(sc.client, sc.addr, 5*time.Second); err != nil {
		t.Fatalf("tcp after unlock: %v", err)
	}
	if err := udpProbe(sc.client, sc.addr, 5*time.Second); err != nil {
		t.Fatalf("udp after unlock: %v", err)
	}
	if err := st.wait(60 * time.Second); err != nil {
		t.Fatalf("established stream after unlock: %v", err)
	}
	if c2, _ := lk.Counters(); c2 != c {
		t.Fatalf("counters moved while unlocked: %v -> %v", c, c2)
	}
}

func TestLockTCX(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	a, b := newPair(t)
	serveEcho(listenIn(t, b, "tcp4", "198.18.0.2:7000").(net.Listener))
	serveUDPEcho(listenIn(t, b, "udp4", "198.18.0.2:7000").(net.PacketConn))

	lk, err := Attach(Target{Net: b, Interface: "eth0"}, Options{Logger: slog.New(slog.NewTextHandler(testutil.LogWriter(t), nil))})
	must(t, err)
	t.Cleanup(func() { lk.Close() })
	if lk.Mode() != ModeTCX {
		t.Fatalf("ModeAuto on an interface chose %v, want tcx on Linux >= 6.6", lk.Mode())
	}
	lockScenario{client: a, addr: "198.18.0.2:7000"}.run(t, lk)

	must(t, lk.Close())
	must(t, lk.Close())
	if _, err := lk.Lock(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lock after Close = %v, want ErrClosed", err)
	}
	eth0, err := b.Link("eth0")
	must(t, err)
	must(t, nsrun.InNetNS(b.NS(), func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			q, err := link.QueryPrograms(link.QueryOptions{Target: eth0.Attrs().Index, Attach: at})
			if err != nil {
				return err
			}
			if len(q.Programs) != 0 {
				t.Errorf("%d %v programs left on eth0 after Close", len(q.Programs), at)
			}
		}
		return nil
	}))
}

func TestLockCgroupSKB(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	cg := newTestCgroup(t)
	_, addr := startEchoHelper(t, cg, "", "127.0.0.1:0")

	lk, err := Attach(Target{Cgroup: cg}, Options{})
	must(t, err)
	t.Cleanup(func() { lk.Close() })
	if lk.Mode() != ModeCgroupSKB {
		t.Fatalf("mode = %v, want cgroup_skb", lk.Mode())
	}
	lockScenario{client: nil, addr: addr}.run(t, lk)
	must(t, lk.Close())
	if err := tcpRoundTrip(nil, addr, 5*time.Second); err != nil {
		t.Fatalf("tcp after Close: %v", err)
	}
}

func TestAttachFallback(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	cg := newTestCgroup(t)
	realTCX := attachTCXFunc
	t.Cleanup(func() { attachTCXFunc = realTCX })

	attachTCXFunc = func(Target, *slog.Logger) (*Lock, error) {
		return nil, notSupported("attach tcx", ebpf.ErrNotSupported)
	}
	t.Run("tcx unsupported falls back to cgroup_skb", func(t *testing.T) {
		lk, err := Attach(Target{Interface: "lo", Cgroup: cg}, Options{})
		must(t, err)
		defer lk.Close()
		if lk.Mode() != ModeCgroupSKB {
			t.Fatalf("mode = %v, want cgroup_skb", lk.Mode())
		}
	})
	t.Run("no cgroup to fall back to", func(t *testing.T) {
		_, err := Attach(Target{Interface: "lo"}, Options{})
		if !errors.Is(err, ErrNotSupported) || !errors.Is(err, ebpf.ErrNotSupported) {
			t.Fatalf("err = %v, want ErrNotSupported", err)
		}
		t.Log(err)
	})
	t.Run("other tcx errors do not fall back", func(t *testing.T) {
		attachTCXFunc = realTCX
		_, err := Attach(Target{Interface: "torpor-no-such-if", Cgroup: cg}, Options{})
		if err == nil || errors.Is(err, ErrNotSupported) {
			t.Fatalf("err = %v, want a plain lookup error", err)
		}
	})
	t.Run("nothing to lock", func(t *testing.T) {
		if _, err := Attach(Target{}, Options{}); !errors.Is(err, ErrNoTarget) {
			t.Fatalf("err = %v, want ErrNoTarget", err)
		}
	})
}

// TestTCXSpare: an Attach takes the TCX objects loaded ahead of it and
// starts loading the next set, so the next Attach loads nothing itself; a
// lock made from the spare starts unlocked with its counters at zero (the
// one before it was left locked), and locks and unlocks as any other.
func TestTCXSpare(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	a, b := newPair(t)
	serveEcho(listenIn(t, b, "tcp4", "198.18.0.2:7000").(net.Listener))
	serveUDPEcho(listenIn(t, b, "udp4", "198.18.0.2:7000").(net.PacketConn))
	attach := func() *Lock {
		t.Helper()
		lk, err := Attach(Target{Net: b, Interface: "eth0"}, Options{})
		must(t, err)
		t.Cleanup(func() { lk.Close() })
		return lk
	}
	// waitSpare waits for the set being loaded and says whether it is there.
	waitSpare := func() *tcxObjects {
		tcxSpare.mu.Lock()
		loaded := tcxSpare.loaded
		tcxSpare.mu.Unlock()
		if loaded != nil {
			<-loaded
		}
		tcxSpare.mu.Lock()
		defer tcxSpare.mu.Unlock()
		return tcxSpare.objs
	}

	first := attach()
	if _, err := first.Lock(); err != nil {
		t.Fatal(err)
	}
	must(t, first.Close())
	spare := waitSpare()
	if spare == nil {
		t.Fatal("no spare set of TCX objects after an Attach")
	}
	second := attach()
	if second.progs[0] != spare.Ingress || second.progs[1] != spare.Egress {
		t.Fatal("the next Attach did not take the spare")
	}
	if second.Locked() {
		t.Fatal("a lock made from the spare starts locked")
	}
	if c, err := second.Counters(); err != nil || c != (Counters{}) {
		t.Fatalf("a lock made from the spare starts with counters %+v (%v), want zero", c, err)
	}
	if waitSpare() == nil {
		t.Fatal("the Attach that took the spare did not load the next one")
	}
	lockScenario{client: a, addr: "198.18.0.2:7000"}.run(t, second)
}
