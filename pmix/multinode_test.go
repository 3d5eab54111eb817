package pmix

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// The multi-node test runs one pmixd per job-node, each in its own process (a
// PMIx server per process), PID namespace (pmixd is PID 1 and reaps) and UTS
// namespace (Open MPI tells nodes apart by hostname), all on loopback. The
// test process relays fences and direct-modex requests between them: a tiny
// stand-in for shim + coordinator.

// relayMsg is one JSON line between a node process and the relay.
type relayMsg struct {
	Type  string        `json:"type"` // hello, fence, modex, reply, serve, served
	ID    uint64        `json:"id,omitempty"`
	Node  int           `json:"node,omitempty"`
	Fence *FenceRequest `json:"fence,omitempty"`
	Modex *ModexRequest `json:"modex,omitempty"`
	Data  []byte        `json:"data,omitempty"`
	Err   string        `json:"err,omitempty"`
}

type relayConn struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (c *relayConn) send(m relayMsg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.enc.Encode(m)
}

// relay is the parent side.
type relay struct {
	t      *testing.T
	ln     net.Listener
	mu     sync.Mutex
	nodes  map[int]*relayConn
	fences map[string][]fenceWaiter
	serves map[uint64]fenceWaiter // forwarded modex requests by relay id
	nextID uint64
	nFence atomic.Int64 // completed fence rounds
	nModex atomic.Int64 // direct-modex requests relayed
}

type fenceWaiter struct {
	conn *relayConn
	id   uint64
	data []byte
}

func newRelay(t *testing.T, path string) *relay {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("relay listen: %v", err)
	}
	r := &relay{t: t, ln: ln, nodes: map[int]*relayConn{}, fences: map[string][]fenceWaiter{}, serves: map[uint64]fenceWaiter{}}
	testutil.Serve(t, ln, r.serve)
	return r
}

func (r *relay) serve(c net.Conn) {
	defer c.Close()
	rc := &relayConn{enc: json.NewEncoder(c)}
	readRelay(c, func(m relayMsg) {
		switch m.Type {
		case "hello":
			r.mu.Lock()
			r.nodes[m.Node] = rc
			r.mu.Unlock()
		case "fence":
			r.fence(rc, m)
		case "modex":
			r.nModex.Add(1)
			r.mu.Lock()
			owner := r.nodes[m.Modex.Node]
			r.nextID++
			id := r.nextID
			r.serves[id] = fenceWaiter{conn: rc, id: m.ID}
			r.mu.Unlock()
			if owner == nil {
				_ = rc.send(relayMsg{Type: "reply", ID: m.ID, Err: "owner not connected"})
				return
			}
			_ = owner.send(relayMsg{Type: "serve", ID: id, Modex: m.Modex})
		case "served":
			r.mu.Lock()
			w, ok := r.serves[m.ID]
			delete(r.serves, m.ID)
			r.mu.Unlock()
			if ok {
				_ = w.conn.send(relayMsg{Type: "reply", ID: w.id, Data: m.Data, Err: m.Err})
			}
		}
	})
}

// readRelay hands each JSON line read from c to handle, until c fails.
func readRelay(c net.Conn, handle func(relayMsg)) {
	dec := json.NewDecoder(bufio.NewReader(c))
	for {
		var m relayMsg
		if err := dec.Decode(&m); err != nil {
			return
		}
		handle(m)
	}
}

func (r *relay) fence(rc *relayConn, m relayMsg) {
	f := m.Fence
	key := fmt.Sprintf("%s/%s#%d", f.Job, f.Signature, f.Seq)
	r.mu.Lock()
	r.fences[key] = append(r.fences[key], fenceWaiter{conn: rc, id: m.ID, data: f.Data})
	ws := r.fences[key]
	r.t.Logf("relay: fence %s from node %d (%d/%d, %d bytes)", key, f.Node, len(ws), len(f.Nodes), len(f.Data))
	if len(ws) < len(f.Nodes) {
		r.mu.Unlock()
		return
	}
	delete(r.fences, key)
	r.mu.Unlock()
	r.nFence.Add(1)
	var all []byte
	for _, w := range ws {
		all = append(all, w.data...)
	}
	for _, w := range ws {
		_ = w.conn.send(relayMsg{Type: "reply", ID: w.id, Data: all})
	}
}

// relayUpstream is the node side: pmixd's Upstream over the relay socket.
type relayUpstream struct {
	conn    *relayConn
	d       atomic.Pointer[Daemon]
	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan relayMsg
}

func dialRelay(path string, node int) (*relayUpstream, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	u := &relayUpstream{conn: &relayConn{enc: json.NewEncoder(c)}, pending: map[uint64]chan relayMsg{}}
	if err := u.conn.send(relayMsg{Type: "hello", Node: node}); err != nil {
		return nil, err
	}
	go readRelay(c, func(m relayMsg) {
		switch m.Type {
		case "reply":
			u.mu.Lock()
			ch := u.pending[m.ID]
			delete(u.pending, m.ID)
			u.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case "serve":
			go func() {
				reply := relayMsg{Type: "served", ID: m.ID}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				data, err := u.d.Load().ServeDirectModex(ctx, m.Modex.Rank)
				if err != nil {
					reply.Err = err.Error()
				}
				reply.Data = data
				_ = u.conn.send(reply)
			}()
		}
	})
	return u, nil
}

func (u *relayUpstream) call(ctx context.Context, m relayMsg) ([]byte, error) {
	ch := make(chan relayMsg, 1)
	u.mu.Lock()
	u.next++
	m.ID = u.next
	u.pending[m.ID] = ch
	u.mu.Unlock()
	if err := u.conn.send(m); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if r.Err != "" {
			return nil, errors.New(r.Err)
		}
		return r.Data, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (u *relayUpstream) Fence(ctx context.Context, req FenceRequest) ([]byte, error) {
	return u.call(ctx, relayMsg{Type: "fence", Fence: &req})
}

func (u *relayUpstream) DirectModex(ctx context.Context, req ModexRequest) ([]byte, error) {
	return u.call(ctx, relayMsg{Type: "modex", Modex: &req})
}

func (u *relayUpstream) Failed(context.Context, Failure) error { return nil }

// startRelayedNodes starts a node process for each of hosts, with spec(i) as
// its job spec and the relay at dir/relay.sock as its upstream: PID 1 of its
// own PID namespace (reaps, and takes its ranks along if killed) with its own
// hostname.
func startRelayedNodes(t *testing.T, ctx context.Context, dir string, hosts []string, spec func(i int) JobSpec) []*nodeProc {
	t.Helper()
	var procs []*nodeProc
	for i := range hosts {
		cfg := helperConfig{
			Spec:     spec(i),
			Hostname: hosts[i],
			Socket:   filepath.Join(dir, "relay.sock"),
		}
		procs = append(procs, startNode(t, ctx, cfg, syscall.CLONE_NEWUTS|syscall.CLONE_NEWPID, nil))
	}
	return procs
}

// waitNodes waits for each node process in turn, fails the test for each that
// did not exit 0, and returns their output one after the other.
func waitNodes(t *testing.T, procs []*nodeProc) string {
	t.Helper()
	var all strings.Builder
	for i, n := range procs {
		res := n.wait(t)
		all.WriteString(n.out.String())
		if res.Code != 0 {
			t.Errorf("node %d: code %d: %s", i, res.Code, res.Err)
		}
	}
	return all.String()
}

func TestRunTwoNodes(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildMPITest(t)
	for _, tc := range []struct {
		name      string
		env       []string
		wantModex bool
		minFences int64
	}{
		// MPI_Init: modex fence with data and a barrier; MPI_Finalize: a barrier.
		{name: "full modex", minFences: 3},
		// No modex fence: ranks fetch each other's data on demand.
		{name: "direct modex", env: []string{"OMPI_MCA_pmix_base_async_modex=1", "OMPI_MCA_pmix_base_collect_data=0"}, wantModex: true, minFences: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rl := newRelay(t, filepath.Join(dir, "relay.sock"))
			job := fmt.Sprintf("t4job%d", os.Getpid())
			hosts := []string{fmt.Sprintf("torpor-n0-%d", os.Getpid()), fmt.Sprintf("torpor-n1-%d", os.Getpid())}
			nodes := []Node{{Hostname: hosts[0], Ranks: []int{0, 1}}, {Hostname: hosts[1], Ranks: []int{2, 3}}}
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			nodeProcs := startRelayedNodes(t, ctx, dir, hosts, func(i int) JobSpec {
				return JobSpec{
					Job: job, Nodes: nodes, NodeIndex: i, Argv: []string{prog},
					ExtraEnv: append([]string{"OMPI_MCA_btl=self,vader,tcp", "OMPI_MCA_btl_tcp_if_include=lo"}, tc.env...),
					TmpDir:   filepath.Join(dir, fmt.Sprintf("node%d", i)), TagOutput: true, KillGrace: time.Second,
				}
			})
			out := waitNodes(t, nodeProcs)
			t.Logf("fence rounds %d, direct modex %d; output:\n%s", rl.nFence.Load(), rl.nModex.Load(), out)
			for r := 0; r < 4; r++ {
				want := fmt.Sprintf("[%s,%d]<stdout>: rank %d of 4 ok sum=10", job, r, r)
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q", want)
				}
				host := hosts[r/2]
				if !strings.Contains(out, fmt.Sprintf("rank %d of 4 ok sum=10 left=%d host=%s", r, (r+3)%4, host)) {
					t.Errorf("rank %d did not report host %s", r, host)
				}
			}
			if rl.nFence.Load() < tc.minFences {
				t.Errorf("%d fence rounds relayed, want >= %d", rl.nFence.Load(), tc.minFences)
			}
			if tc.wantModex && rl.nModex.Load() < 1 {
				t.Errorf("no direct-modex request was relayed with async modex on")
			}
			assertNoChildren(t)
		})
	}
}
