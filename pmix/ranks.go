package pmix

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// rank is one local rank process. pmixd reaps it itself (wait4), so the
// os.Process is only used to signal it (pidfd: never a recycled pid).
type rank struct {
	rank   int
	pid    int
	proc   *os.Process
	reaped atomic.Bool
	pipes  []*os.File // read ends of stdout and stderr
}

// outputSink serialises forwarded lines from every rank.
type outputSink struct {
	mu     sync.Mutex
	stdout io.Writer
	stderr io.Writer
}

func (o *outputSink) write(w io.Writer, prefix string, line []byte) {
	if w == nil {
		return
	}
	// One write per line: the prefix and the line in two writes let another
	// writer on the same file (the daemon's own log on a shared stderr) land
	// between them.
	buf := make([]byte, 0, len(prefix)+len(line))
	buf = append(append(buf, prefix...), line...)
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = w.Write(buf)
}

// forward copies r to w line by line, each line prefixed, until EOF.
func (o *outputSink) forward(r io.Reader, w io.Writer, prefix string) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if line[len(line)-1] != '\n' {
				line = append(line, '\n')
			}
			o.write(w, prefix, line)
		}
		if err != nil {
			return
		}
	}
}

// startRank prepares a local rank's process-management connection and forks it.
func (d *Daemon) startRank(ctx context.Context, r int, sink *outputSink, outWG *sync.WaitGroup) (*rank, error) {
	forkEnv, files, err := d.prepare(ctx, r)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		return nil, err
	}
	base := d.spec.Env
	if base == nil {
		base = os.Environ()
	}
	cmd := exec.Command(d.spec.Argv[0], d.spec.Argv[1:]...)
	cmd.Env = rankEnv(base, forkEnv, d.spec.ExtraEnv)
	cmd.Dir = d.spec.Dir
	cmd.ExtraFiles = files
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe for rank %d: %w", r, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("stderr pipe for rank %d: %w", r, err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start rank %d (%s): %w", r, d.spec.Argv[0], err)
	}
	rk := &rank{rank: r, pid: cmd.Process.Pid, proc: cmd.Process, pipes: []*os.File{outR, errR}}
	var outPrefix, errPrefix string
	if d.spec.TagOutput {
		outPrefix = fmt.Sprintf("[%s,%d]<stdout>: ", d.spec.Job, r)
		errPrefix = fmt.Sprintf("[%s,%d]<stderr>: ", d.spec.Job, r)
	}
	outWG.Add(2)
	go func() { defer outWG.Done(); sink.forward(outR, d.spec.Stdout, outPrefix) }()
	go func() { defer outWG.Done(); sink.forward(errR, d.spec.Stderr, errPrefix) }()
	d.log.Debug("rank started", "rank", r, "pid", rk.pid)
	return rk, nil
}

// signalAll sends sig to every local rank not yet reaped.
func (d *Daemon) signalAll(sig syscall.Signal) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rk := range d.ranks {
		if rk.reaped.Load() {
			continue
		}
		if err := rk.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			d.log.Debug("signal rank", "rank", rk.rank, "pid", rk.pid, "signal", sig.String(), "err", err)
		}
	}
}

// waitPid reaps one pid.
func waitPid(pid int) (syscall.WaitStatus, error) {
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		return ws, err
	}
}

// reap sends each local rank's end to exits. With ReapOrphans it reaps every
// child of the process and drops the ones that are not ranks.
func (d *Daemon) reap(ranks []*rank, exits chan<- rankExit) {
	if !d.spec.ReapOrphans {
		for _, rk := range ranks {
			go func() {
				ws, err := waitPid(rk.pid)
				if err != nil {
					d.log.Error("wait for rank", "rank", rk.rank, "pid", rk.pid, "err", err)
					ws = syscall.WaitStatus(0xff << 8) // report as exit 255
				}
				rk.reaped.Store(true)
				exits <- rankExit{rank: rk.rank, pid: rk.pid, status: ws}
			}()
		}
		return
	}
	byPid := map[int]*rank{}
	for _, rk := range ranks {
		byPid[rk.pid] = rk
	}
	go func() {
		left := len(ranks)
		for left > 0 {
			ws, pid, err := wait4Any()
			if err != nil {
				d.log.Error("wait for children", "err", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			rk, ok := byPid[pid]
			if !ok {
				d.log.Debug("reaped orphan", "pid", pid)
				continue
			}
			left--
			rk.reaped.Store(true)
			exits <- rankExit{rank: rk.rank, pid: pid, status: ws}
		}
	}()
}

func wait4Any() (syscall.WaitStatus, int, error) {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		return ws, pid, err
	}
}

// supervise starts the local ranks and runs until all of them have ended.
func (d *Daemon) supervise(ctx, startCtx context.Context) (int, error) {
	sink := &outputSink{stdout: d.spec.Stdout, stderr: d.spec.Stderr}
	var outWG sync.WaitGroup
	var started []*rank
	var startErr error
	for _, r := range d.spec.LocalRanks() {
		rk, err := d.startRank(startCtx, r, sink, &outWG)
		if err != nil {
			startErr = fmt.Errorf("job %s: %w", d.spec.Job, err)
			break
		}
		started = append(started, rk)
		d.mu.Lock()
		d.ranks[r] = rk
		d.mu.Unlock()
	}
	exits := make(chan rankExit, len(started))
	d.reap(started, exits)

	var result *JobError
	var killTimer *time.Timer
	endJob := func(je *JobError) {
		if result != nil {
			return
		}
		result = je
		if je.Rank >= 0 {
			d.bg.Add(1)
			go func() {
				defer d.bg.Done()
				d.reportFailure(context.WithoutCancel(ctx), je)
			}()
		}
		d.signalAll(syscall.SIGTERM)
		killTimer = time.AfterFunc(d.spec.KillGrace, func() { d.signalAll(syscall.SIGKILL) })
	}
	if startErr != nil {
		endJob(&JobError{Job: d.spec.Job, Node: d.spec.NodeIndex, Rank: -1, Code: 1, Reason: startErr.Error(), Cause: startErr})
	}
	ctxDone := ctx.Done()
	for left := len(started); left > 0; {
		select {
		case e := <-exits:
			left--
			d.mu.Lock()
			ab := d.firstAbort()
			conn, fin := d.connected[e.rank], d.finalized[e.rank]
			d.mu.Unlock()
			if ab != nil {
				endJob(ab)
				continue
			}
			if je := judge(d.spec.Job, d.spec.NodeIndex, e, nil, conn, fin); je != nil {
				endJob(je)
			} else {
				d.log.Debug("rank exited", "rank", e.rank, "pid", e.pid)
			}
		case <-d.events:
			d.mu.Lock()
			ab := d.firstAbort()
			stop := d.stopCause
			d.mu.Unlock()
			if ab != nil {
				endJob(ab)
			} else if stop != nil {
				endJob(&JobError{Job: d.spec.Job, Node: d.spec.NodeIndex, Rank: -1, Code: 143,
					Reason: "stopped: " + stop.Error(), Cause: fmt.Errorf("%w: %w", ErrJobStopped, stop)})
			}
		case <-ctxDone:
			ctxDone = nil
			endJob(&JobError{Job: d.spec.Job, Node: d.spec.NodeIndex, Rank: -1, Code: 143,
				Reason: "stopped: " + ctx.Err().Error(), Cause: fmt.Errorf("%w: %w", ErrJobStopped, ctx.Err())})
		}
	}
	if killTimer != nil {
		killTimer.Stop()
	}
	d.drainOutput(&outWG, started)
	d.bg.Wait() // the failure report is bounded (reportFailure)
	for _, rk := range started {
		_ = rk.proc.Release()
	}
	if result == nil {
		return 0, nil
	}
	return result.Code, result
}

// firstAbort turns the lowest aborting rank into a JobError; d.mu is held.
func (d *Daemon) firstAbort() *JobError {
	best := -1
	for r := range d.aborts {
		if best < 0 || r < best {
			best = r
		}
	}
	if best < 0 {
		return nil
	}
	pid := 0
	if rk := d.ranks[best]; rk != nil {
		pid = rk.pid
	}
	return judge(d.spec.Job, d.spec.NodeIndex, rankExit{rank: best, pid: pid}, d.aborts[best], false, false)
}

// drainOutput waits for the ranks' output to end; a grandchild that keeps a
// pipe open gets a few seconds before the pipe is closed under it.
func (d *Daemon) drainOutput(wg *sync.WaitGroup, ranks []*rank) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		d.log.Warn("rank output still open after all ranks ended; closing it")
		for _, rk := range ranks {
			for _, p := range rk.pipes {
				_ = p.Close()
			}
		}
		<-done
	}
	for _, rk := range ranks {
		for _, p := range rk.pipes {
			_ = p.Close()
		}
	}
}
