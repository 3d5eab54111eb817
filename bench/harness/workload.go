package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// Bins are the workload binaries a job-node runs.
type Bins struct {
	MemHog    string // bench/harness/memhog
	TCPStream string // bench/workloads/tcpstream
	AppLog    string // bench/harness/applog (B6)
}

// BuildBins compiles the job-node workloads into dir with the Go toolchain.
func BuildBins(ctx context.Context, dir string) (Bins, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	b := Bins{MemHog: filepath.Join(dir, "memhog"), TCPStream: filepath.Join(dir, "tcpstream"), AppLog: filepath.Join(dir, "applog")}
	for out, pkg := range map[string]string{
		b.MemHog:    "github.com/torpor-hpc/torpor/bench/harness/memhog",
		b.TCPStream: "github.com/torpor-hpc/torpor/bench/workloads/tcpstream",
		b.AppLog:    "github.com/torpor-hpc/torpor/bench/harness/applog",
	} {
		cmd := exec.CommandContext(ctx, gobin, "build", "-o", out, pkg)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return Bins{}, fmt.Errorf("build %s (run from the repository, with Go on PATH): %v\n%s", pkg, err, msg)
		}
	}
	return b, nil
}

// Workload is what every job-node of a benchmark job runs: a memhog of MiB
// and, when Ring, one tcpstream receiver and one sender to the next job-node
// (a ring of TCP streams with data always in flight).
type Workload struct {
	MiB      int
	Ring     bool
	ReadRate string // receiver's read limit, e.g. "4M"
	// SendRate is the sender's limit, "0" = unlimited; "" is 3M, below
	// the reader's 4M: segments flow all the time with the window open,
	// so the time until the first segment after a restore is a stall when
	// it is long, not a window that had not yet reopened (with the reader
	// the slower, its window reopened in bursts: gaps of up to 92 ms
	// between data segments on loopback, 10 ms with the sender slower).
	SendRate string
	// RcvBuf is the receiver's SO_RCVBUF; "" is 1M. Its queue stays full
	// (a slow reader) yet bounded: left to the kernel's autotuning (up to
	// net.ipv4.tcp_rmem's maximum, 32 MiB on the benchmark's VM) the queues
	// CRIU peeked at held 1.3 to 19.5 MB, and dumping one connection took
	// up to 0.7 s (under MSG_PEEK, tcp_recvmsg walks the receive queue from
	// its head for every buffer it copies): noise of that size in every
	// checkpoint, restart and migration figure.
	RcvBuf string
	Fill   string // memhog -fill ("field": a stencil's grids, B7)
	// Busy runs memhog without its pause between iterations: its
	// progress rate is the CPU it gets (B9).
	Busy bool
}

// nodeFiles are the status files of one job-node.
type nodeFiles struct{ Mem, Recv, Send string }

// jobNode builds the spec of job-node i (0-based) of n on host, running w,
// with its status files under dir.
func jobNode(dir, job string, i, n int, host string, w Workload, bins Bins) (agentapi.NodeSpec, nodeFiles, error) {
	d := filepath.Join(dir, "status", job)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return agentapi.NodeSpec{}, nodeFiles{}, err
	}
	name := fmt.Sprintf("n%d", i)
	f := nodeFiles{Mem: filepath.Join(d, name+".mem")}
	cmd := fmt.Sprintf("%s -m %d -status %s", bins.MemHog, w.MiB, f.Mem)
	if w.Fill != "" {
		cmd += " -fill " + w.Fill
	}
	if w.Busy {
		cmd += " -every 0"
	}
	if w.Ring {
		f.Recv, f.Send = filepath.Join(d, name+".recv"), filepath.Join(d, name+".send")
		next := strings.Split(simhost.NodeAddr((i+1)%n+1), "/")[0]
		readRate, sendRate := w.ReadRate, w.SendRate
		if readRate == "" {
			readRate = "4M"
		}
		if sendRate == "" {
			sendRate = "3M"
		}
		rcvbuf := w.RcvBuf
		if rcvbuf == "" {
			rcvbuf = "1M"
		}
		cmd = fmt.Sprintf("%s & %s -listen :7000 -status %s -read-rate %s -rcvbuf %s & exec %s -connect %s:7000 -status %s -rate %s",
			cmd, bins.TCPStream, f.Recv, readRate, rcvbuf, bins.TCPStream, next, f.Send, sendRate)
	} else {
		cmd = "exec " + cmd
	}
	return agentapi.NodeSpec{
		Name: name, Host: host, IP: simhost.NodeAddr(i + 1), Hostname: job + "-" + name,
		Argv: []string{"/bin/sh", "-c", cmd},
	}, f, nil
}

// readCounter reads the first field of a fixed-width status file and checks
// that the line says "ok" (memhog: third field, tcpstream: second field).
func readCounter(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, errNotYet
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("status %s: %q", path, strings.TrimSpace(string(b)))
	}
	last := f[len(f)-1]
	if last == "filling" {
		return 0, errNotYet
	}
	if last != "ok" {
		return n, fmt.Errorf("workload failed: %s: %s", path, strings.TrimSpace(string(b)))
	}
	return n, nil
}

var errNotYet = errors.New("workload not ready yet")

// counters reads the counters of files (memhog and, if present, receivers).
type counters struct{ mem, recv []uint64 }

func readAll(files []nodeFiles) (counters, error) {
	var c counters
	for _, f := range files {
		m, err := readCounter(f.Mem)
		if err != nil {
			return c, err
		}
		c.mem = append(c.mem, m)
		if f.Recv != "" {
			r, err := readCounter(f.Recv)
			if err != nil {
				return c, err
			}
			c.recv = append(c.recv, r)
		}
	}
	return c, nil
}

// waitReady waits until every memhog has filled its memory and every
// receiver has verified some bytes.
func waitReady(ctx context.Context, files []nodeFiles, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := readAll(files)
		if err == nil {
			ready := true
			for _, r := range c.recv {
				ready = ready && r > 0
			}
			for _, m := range c.mem {
				ready = ready && m > 0
			}
			if ready {
				return nil
			}
		} else if !errors.Is(err, errNotYet) && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workload not ready after %v (last: %v)", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Progress is how long after a reference time (the end of the unlock) the
// job moved again.
type Progress struct {
	Mem time.Duration `json:"mem_ns"` // every memhog counter moved (CPU only, no network)
	TCP time.Duration `json:"tcp_ns"` // every job-node's namespace received a TCP segment (0 without ring)
}

// pollInterval is how often counters are read while waiting for progress.
const pollInterval = 2 * time.Millisecond

// segProbe reads, per job-node, how many TCP segments its namespace received.
type segProbe func() ([]uint64, error)

// waitProgress waits until every memhog counter has moved past memBase and,
// with probe, every job-node's namespace has received a TCP segment beyond
// segBase, and says how long after ref each happened.
func waitProgress(ctx context.Context, files []nodeFiles, memBase []uint64, probe segProbe, segBase []uint64, ref time.Time, timeout time.Duration) (Progress, error) {
	var p Progress
	memDone := make([]bool, len(memBase))
	segDone := make([]bool, len(segBase))
	deadline := time.Now().Add(timeout)
	for {
		now := time.Now()
		c, err := readAll(files)
		if err != nil && !errors.Is(err, errNotYet) {
			return p, err
		}
		if err == nil && p.Mem == 0 {
			all := true
			for i := range memDone {
				memDone[i] = memDone[i] || c.mem[i] != memBase[i]
				all = all && memDone[i]
			}
			if all {
				p.Mem = now.Sub(ref)
			}
		}
		if probe != nil && p.TCP == 0 {
			segs, err := probe()
			if err != nil {
				return p, err
			}
			all := true
			for i := range segDone {
				segDone[i] = segDone[i] || segs[i] > segBase[i]
				all = all && segDone[i]
			}
			if all {
				p.TCP = now.Sub(ref)
			}
		}
		if p.Mem > 0 && (p.TCP > 0 || probe == nil) {
			return p, nil
		}
		if now.After(deadline) {
			return p, fmt.Errorf("job made no progress within %v of resuming (memhog moved: %v, segments received: %v)", timeout, memDone, segDone)
		}
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}
