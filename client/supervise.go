package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/coordinator"
)

// SuperviseOptions says how Supervise looks after a job.
type SuperviseOptions struct {
	// RunDir is where the job-nodes' output files are, as
	// <RunDir>/jobs/<job>/<node>.out: the run directory of the shims.
	RunDir string
	// Output receives the job's output, copied from those files.
	Output io.Writer
	// RestartOnFailure is how many times a failed job is restarted from its
	// last checkpoint (0: never).
	RestartOnFailure int
	// CheckpointInterval is the time between periodic checkpoints (0: none).
	CheckpointInterval time.Duration
	// CheckpointSignal, sent to this process once the job has started, means
	// "checkpoint now" (nil: no signal does).
	CheckpointSignal os.Signal

	// Reconnect, if set, is called when the coordinator stops answering
	// (the process that hosted it ended): it returns a client of the
	// coordinator that serves the job now, embedding one if need be.
	Reconnect func(ctx context.Context) (apiv1.CoordinatorClient, error)

	// poll is how often the job's state is read while the coordinator's
	// events cannot be followed, and how often its output is looked at
	// while the output grows; 0 means 200ms.
	poll time.Duration
	// settled is how often the job's state is read while its events are
	// followed (a safety net: each event reads it); 0 means 5s.
	settled time.Duration
}

// idleOutput is the longest time between two looks at output that does not
// grow: each look that finds nothing new doubles the time from poll up to
// this.
const idleOutput = time.Second

// Supervise starts the job of req and stays with it: it copies its output
// to opt.Output, checkpoints it on the checkpoint signal or interval,
// restarts it from its last checkpoint when it fails (opt.RestartOnFailure
// times), and writes what happens to msgs. It returns when the job is
// finished (code 0) or failed (its exit status, at least 1), or when ctx is
// done (code 130; the job is left running). err is the coordinator's, when
// it cannot be asked.
func Supervise(ctx context.Context, cl apiv1.CoordinatorClient, req *apiv1.RunRequest, msgs io.Writer, opt SuperviseOptions) (code int, err error) {
	job, err := cl.Run(ctx, req)
	if err != nil {
		return 0, RPCErr(err)
	}
	fmt.Fprintf(msgs, "torpor: job %s started on %s\n", job.Spec.Id, nodeList(job.Spec))
	return Follow(ctx, cl, job.Spec, msgs, opt)
}

// Follow stays with a job that was started or restarted, as Supervise does
// after it starts one. The job's output is copied from its beginning: after
// a restart, the files hold what the job had written by its checkpoint.
func Follow(ctx context.Context, cl apiv1.CoordinatorClient, spec *apiv1.JobSpec, msgs io.Writer, opt SuperviseOptions) (code int, err error) {
	id := spec.Id
	sig := make(chan os.Signal, 1)
	if opt.CheckpointSignal != nil {
		signal.Notify(sig, opt.CheckpointSignal)
		defer signal.Stop(sig)
	}
	var tick <-chan time.Time
	if opt.CheckpointInterval > 0 {
		t := time.NewTicker(opt.CheckpointInterval)
		defer t.Stop()
		tick = t.C
	}
	tail := newTailer(opt.RunDir, id, spec.Nodes, opt.Output)
	// Output files this process cannot read (the shims' run directories
	// are not here) come through the coordinator.
	tail.relay = func(ctx context.Context, offsets map[string]int64) (*apiv1.OutputReply, error) {
		return cl.Output(ctx, &apiv1.OutputRequest{Job: id, Offsets: offsets})
	}
	restarts := 0
	busy := false // the last restart was refused with ErrBusy
	every := cmp.Or(opt.poll, 200*time.Millisecond)
	settled := cmp.Or(opt.settled, 5*time.Second)
	// The job's state is read when the coordinator reports an event of
	// the job (its first is the marker of the stream's start), and every
	// settled besides; where its events cannot be followed, every poll.
	ev := followEvents(ctx, cl, id)
	defer func() { ev.stop() }()
	state := time.NewTicker(settled)
	defer state.Stop()
	// Output is looked at every poll while it grows, less often while not.
	outEvery := every
	out := time.NewTimer(outEvery)
	defer out.Stop()
	for {
		if ctx.Err() != nil { // before anything else that is ready
			fmt.Fprintf(msgs, "torpor: interrupted; job %s is left to the coordinator (see `torpor ps`)\n", id)
			return 130, nil
		}
		select {
		case <-ctx.Done():
			continue
		case <-sig:
			checkpointNow(ctx, cl, id, "signal", msgs)
		case <-tick:
			checkpointNow(ctx, cl, id, "interval", msgs)
		case <-out.C:
			if tail.poll(ctx) {
				outEvery = every
			} else {
				outEvery = min(2*outEvery, max(idleOutput, every))
			}
			out.Reset(outEvery)
			continue
		case <-ev.changed:
		case <-ev.ended:
			// An older coordinator, or one that went away: poll.
			ev.stop()
			ev = noEvents
			state.Reset(every)
		case <-state.C:
		}
		tail.poll(ctx)
		j, err := cl.GetJob(ctx, &apiv1.JobRef{Job: id})
		if status.Code(err) == codes.Unavailable && opt.Reconnect != nil && ctx.Err() == nil {
			fmt.Fprintf(msgs, "torpor: the coordinator went away; reconnecting to follow job %s\n", id)
			if cl, err = opt.Reconnect(ctx); err != nil {
				return 0, err
			}
			ev.stop()
			ev = followEvents(ctx, cl, id)
			state.Reset(settled)
			continue
		}
		if err != nil {
			return 0, RPCErr(err)
		}
		if ev != noEvents && j.State != string(coordinator.StateFailed) {
			state.Reset(settled)
		}
		switch j.State {
		case string(coordinator.StateFinished):
			tail.poll(ctx)
			fmt.Fprintf(msgs, "torpor: job %s finished\n", id)
			return 0, nil
		case string(coordinator.StateFailed):
			tail.poll(ctx)
			if restarts < opt.RestartOnFailure && j.LastCheckpoint != "" {
				if !busy {
					fmt.Fprintf(msgs, "torpor: job %s failed (%s); restart %d of %d from %s\n", id, j.Reason, restarts+1, opt.RestartOnFailure, j.LastCheckpoint)
				}
				rep, err := cl.Restart(ctx, &apiv1.RestartRequest{Ref: id, Fallback: true})
				// Whatever came of it, the job's state is read at the next
				// poll: a failed job that stays failed sends no event.
				state.Reset(every)
				// ErrBusy: the job reads failed while the operation that
				// failed it (a cancel) still destroys its job-nodes. Ask
				// again at the next poll.
				if busy = status.Code(err) == codes.Aborted; busy {
					continue
				}
				restarts++
				if err != nil {
					fmt.Fprintf(msgs, "torpor: restart failed: %v\n", RPCErr(err))
				} else {
					PrintMoved(msgs, rep.Moved)
				}
				continue
			}
			fmt.Fprintf(msgs, "torpor: job %s failed: %s\n", id, j.Reason)
			code := int(j.ExitCode)
			if code == 0 {
				code = 1
			}
			return code, nil
		case string(coordinator.StateSuspended):
			// Stay: a suspended job is resumed with `torpor resume`, and an
			// embedded coordinator must live for that.
		}
	}
}

// jobEvents follows the coordinator's events of one job (Events): changed
// holds a value after each event not yet taken, and ended is closed when
// the stream ends.
type jobEvents struct {
	changed chan struct{}
	ended   chan struct{}
	stop    context.CancelFunc
}

// noEvents is what Follow waits on once the events cannot be followed.
var noEvents = &jobEvents{stop: func() {}}

func followEvents(ctx context.Context, cl apiv1.CoordinatorClient, id string) *jobEvents {
	ctx, cancel := context.WithCancel(ctx)
	e := &jobEvents{changed: make(chan struct{}, 1), ended: make(chan struct{}), stop: cancel}
	go func() {
		defer close(e.ended)
		st, err := cl.Events(ctx, &apiv1.EventsRequest{Job: id, Follow: true, NoHistory: true})
		if err != nil {
			return
		}
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
			select {
			case e.changed <- struct{}{}:
			default:
			}
		}
	}()
	return e
}

func checkpointNow(ctx context.Context, cl apiv1.CoordinatorClient, id, why string, msgs io.Writer) {
	start := time.Now()
	rep, err := cl.Checkpoint(ctx, &apiv1.CheckpointRequest{Job: id})
	if err != nil {
		fmt.Fprintf(msgs, "torpor: checkpoint (%s) failed: %v\n", why, RPCErr(err))
		return
	}
	fmt.Fprintf(msgs, "torpor: checkpoint %s (%s) committed in %s\n", rep.Handle, why, time.Since(start).Round(time.Millisecond))
}

// nodeList is the job-nodes of s for a message: "n0@h1(198.19.0.2) ...".
func nodeList(s *apiv1.JobSpec) string {
	var parts []string
	for _, n := range s.Nodes {
		parts = append(parts, fmt.Sprintf("%s@%s(%s)", n.Name, n.Host, strings.Split(n.Ip, "/")[0]))
	}
	return strings.Join(parts, " ")
}

// tailer copies job-node output files to w as they grow. After a restart a
// file is cut back to its size at the checkpoint; the replayed output is
// printed again, as the job really produces it again.
type tailer struct {
	w     io.Writer
	names []string // job-node names
	files []string
	off   []int64
	// relay, if set, asks the coordinator for the output of the job-nodes
	// whose files are not here (a run directory this host does not share).
	relay func(ctx context.Context, offsets map[string]int64) (*apiv1.OutputReply, error)
}

func newTailer(runDir, job string, nodes []*apiv1.NodeSpec, w io.Writer) *tailer {
	t := &tailer{w: w}
	for _, n := range nodes {
		t.names = append(t.names, n.Name)
		t.files = append(t.files, filepath.Join(runDir, "jobs", job, n.Name+".out"))
		t.off = append(t.off, 0)
	}
	return t
}

// relayRounds bounds how many times one poll asks the coordinator again
// for output that keeps coming in full chunks.
const relayRounds = 64

// poll copies what the files gained since the last poll and says whether
// there was any.
func (t *tailer) poll(ctx context.Context) (grew bool) {
	var remote map[string]int64 // job-node -> offset, for files not here
	index := map[string]int{}
	for i, p := range t.files {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) && t.relay != nil {
			if remote == nil {
				remote = map[string]int64{}
			}
			remote[t.names[i]], index[t.names[i]] = t.off[i], i
			continue
		}
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil && st.Size() < t.off[i] {
			t.off[i] = st.Size()
		}
		n, _ := io.Copy(t.w, io.NewSectionReader(f, t.off[i], 1<<62))
		t.off[i] += n
		grew = grew || n > 0
		f.Close()
	}
	// Each job-node's output is written whole at the end, not chunk by
	// chunk: chunks of two job-nodes would cut each other's lines.
	got := map[int][]byte{}
	defer func() {
		for i := range t.files {
			if b := got[i]; len(b) > 0 {
				t.w.Write(b)
			}
		}
	}()
	for round := 0; len(remote) > 0 && round < relayRounds; round++ {
		rep, err := t.relay(ctx, remote)
		if err != nil {
			return
		}
		more := map[string]int64{}
		for _, o := range rep.Nodes {
			i, ok := index[o.Node]
			if !ok {
				continue
			}
			if o.Size < t.off[i] {
				t.off[i] = o.Size // cut back by a restart: continue from there
				continue
			}
			if len(o.Data) == 0 {
				continue
			}
			got[i] = append(got[i], o.Data...)
			t.off[i] += int64(len(o.Data))
			grew = true
			if t.off[i] < o.Size {
				more[o.Node] = t.off[i]
			}
		}
		remote = more
	}
	return grew
}

// PrintMoved tells the user which of their files a restart moved aside: files
// below a --keep directory that did not exist at the checkpoint.
func PrintMoved(w io.Writer, moved []string) {
	for _, m := range moved {
		fmt.Fprintf(w, "torpor: %s came after the checkpoint: moved aside, not deleted\n", m)
	}
}
