package client

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/coordinator"
)

// fakeCoordinator answers the calls Supervise makes. Supervise calls it from
// the test's goroutine, so it needs no lock.
type fakeCoordinator struct {
	apiv1.CoordinatorClient // nil: other calls panic
	runErr                  error
	// job gives GetJob's answer for its nth call (from 1).
	job         func(n int) *apiv1.Job
	getJobs     int
	checkpoints []string // the job of each Checkpoint call
	ckptErr     error    // the first Checkpoint fails with it, when set
	restarts    []*apiv1.RestartRequest
	afterGetJob func()
	// busyRestarts is how many Restart calls are refused as busy first.
	busyRestarts int
	// getErr, when set, fails GetJob's nth call with what it returns.
	getErr func(n int) error
}

// Events fails as a coordinator without events would: Follow reads the
// job's state every poll.
func (f *fakeCoordinator) Events(context.Context, *apiv1.EventsRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[apiv1.Event], error) {
	return nil, status.Error(codes.Unimplemented, "unknown method Events")
}

// Output answers as a coordinator whose job-nodes wrote nothing yet.
func (f *fakeCoordinator) Output(context.Context, *apiv1.OutputRequest, ...grpc.CallOption) (*apiv1.OutputReply, error) {
	return &apiv1.OutputReply{}, nil
}

var testSpec = &apiv1.JobSpec{Id: "j", Nodes: []*apiv1.NodeSpec{
	{Name: "n0", Host: "h1", Ip: "198.19.0.2/15"},
	{Name: "n1", Host: "h2", Ip: "198.19.0.3/15"},
}}

func (f *fakeCoordinator) Run(_ context.Context, in *apiv1.RunRequest, _ ...grpc.CallOption) (*apiv1.Job, error) {
	if f.runErr != nil {
		return nil, f.runErr
	}
	return &apiv1.Job{Spec: in.Spec, State: string(coordinator.StateRunning)}, nil
}

func (f *fakeCoordinator) GetJob(_ context.Context, in *apiv1.JobRef, _ ...grpc.CallOption) (*apiv1.Job, error) {
	f.getJobs++
	if f.afterGetJob != nil {
		defer f.afterGetJob()
	}
	if f.getErr != nil {
		if err := f.getErr(f.getJobs); err != nil {
			return nil, err
		}
	}
	return f.job(f.getJobs), nil
}

func (f *fakeCoordinator) Checkpoint(_ context.Context, in *apiv1.CheckpointRequest, _ ...grpc.CallOption) (*apiv1.CheckpointReply, error) {
	if f.ckptErr != nil {
		err := f.ckptErr
		f.ckptErr = nil
		return nil, err
	}
	f.checkpoints = append(f.checkpoints, in.Job)
	return &apiv1.CheckpointReply{Handle: in.Job + "/1"}, nil
}

func (f *fakeCoordinator) Restart(_ context.Context, in *apiv1.RestartRequest, _ ...grpc.CallOption) (*apiv1.RestartReply, error) {
	f.restarts = append(f.restarts, in)
	if len(f.restarts) <= f.busyRestarts {
		return nil, status.Error(codes.Aborted, "operation not allowed in this state: job j is busy (failed)")
	}
	return &apiv1.RestartReply{Job: in.Ref}, nil
}

func state(s coordinator.State) *apiv1.Job { return &apiv1.Job{State: string(s)} }

func supervise(t *testing.T, ctx context.Context, f apiv1.CoordinatorClient, opt SuperviseOptions) (code int, msgs string) {
	t.Helper()
	if ctx == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
	}
	var buf bytes.Buffer
	if opt.Output == nil {
		opt.Output = &bytes.Buffer{}
	}
	code, err := Supervise(ctx, f, &apiv1.RunRequest{Spec: testSpec}, &buf, opt)
	if err != nil {
		t.Fatalf("Supervise: %v\n%s", err, buf.String())
	}
	return code, buf.String()
}

// writeOutput writes data as job-node node's output file of job j in the
// run directory dir.
func writeOutput(t *testing.T, dir, node, data string) {
	t.Helper()
	out := filepath.Join(dir, "jobs", "j", node+".out")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSuperviseRestartsThenFails(t *testing.T) {
	dir := t.TempDir()
	writeOutput(t, dir, "n0", "step 1\n")
	f := &fakeCoordinator{job: func(n int) *apiv1.Job {
		return &apiv1.Job{State: string(coordinator.StateFailed), Reason: "n0 exited 3", ExitCode: 3, LastCheckpoint: "j/7"}
	}}
	var output bytes.Buffer
	code, msgs := supervise(t, nil, f, SuperviseOptions{RunDir: dir, Output: &output, RestartOnFailure: 1, poll: time.Millisecond})
	if code != 3 {
		t.Errorf("code = %d, want the job's exit status 3", code)
	}
	want := "torpor: job j started on n0@h1(198.19.0.2) n1@h2(198.19.0.3)\n" +
		"torpor: job j failed (n0 exited 3); restart 1 of 1 from j/7\n" +
		"torpor: job j failed: n0 exited 3\n"
	if msgs != want {
		t.Errorf("messages\n got %q\nwant %q", msgs, want)
	}
	if len(f.restarts) != 1 || f.restarts[0].Ref != "j" || !f.restarts[0].Fallback {
		t.Errorf("restarts = %v, want one of j with fallback", f.restarts)
	}
	if output.String() != "step 1\n" {
		t.Errorf("output = %q, want the job-node's file", output.String())
	}
}

// A cancel reads failed while it still destroys the job-nodes: the restart
// refused as busy is asked again, and counted and announced once.
func TestSuperviseRestartWaitsForBusy(t *testing.T) {
	f := &fakeCoordinator{busyRestarts: 3}
	f.job = func(int) *apiv1.Job {
		if len(f.restarts) > f.busyRestarts {
			return state(coordinator.StateFinished) // restored, and it ran to its end
		}
		return &apiv1.Job{State: string(coordinator.StateFailed), Reason: "cancelled", LastCheckpoint: "j/7"}
	}
	code, msgs := supervise(t, nil, f, SuperviseOptions{RunDir: t.TempDir(), RestartOnFailure: 1, poll: time.Millisecond})
	want := "torpor: job j started on n0@h1(198.19.0.2) n1@h2(198.19.0.3)\n" +
		"torpor: job j failed (cancelled); restart 1 of 1 from j/7\n" +
		"torpor: job j finished\n"
	if code != 0 || len(f.restarts) != 4 || msgs != want {
		t.Errorf("code %d, %d restart calls (want 4), messages\n got %q\nwant %q", code, len(f.restarts), msgs, want)
	}
}

func TestSuperviseFailedWithoutStatus(t *testing.T) {
	// Without a checkpoint there is nothing to restart from; a failure
	// without an exit status is status 1.
	f := &fakeCoordinator{job: func(int) *apiv1.Job {
		return &apiv1.Job{State: string(coordinator.StateFailed), Reason: "host h1 lost"}
	}}
	code, msgs := supervise(t, nil, f, SuperviseOptions{RunDir: t.TempDir(), RestartOnFailure: 3, poll: time.Millisecond})
	if code != 1 || len(f.restarts) != 0 || !strings.HasSuffix(msgs, "torpor: job j failed: host h1 lost\n") {
		t.Errorf("code %d, restarts %v, messages %q", code, f.restarts, msgs)
	}
}

func TestSuperviseCheckpointInterval(t *testing.T) {
	f := &fakeCoordinator{ckptErr: status.Error(codes.Unavailable, "disk full")}
	f.job = func(int) *apiv1.Job {
		if len(f.checkpoints) > 0 {
			return state(coordinator.StateFinished)
		}
		return state(coordinator.StateRunning)
	}
	// The state is looked at only after a checkpoint.
	code, msgs := supervise(t, nil, f, SuperviseOptions{RunDir: t.TempDir(), CheckpointInterval: time.Millisecond, poll: time.Hour})
	if code != 0 {
		t.Errorf("code = %d", code)
	}
	lines := strings.Split(strings.TrimSuffix(msgs, "\n"), "\n")
	if len(lines) != 4 || lines[1] != "torpor: checkpoint (interval) failed: disk full" ||
		!strings.HasPrefix(lines[2], "torpor: checkpoint j/1 (interval) committed in ") ||
		lines[3] != "torpor: job j finished" {
		t.Errorf("messages:\n%s", msgs)
	}
}

func TestSuperviseCheckpointSignal(t *testing.T) {
	f := &fakeCoordinator{}
	f.job = func(int) *apiv1.Job {
		if len(f.checkpoints) > 0 {
			return state(coordinator.StateFinished)
		}
		return state(coordinator.StateSuspended) // stays
	}
	// The first look at the job is after the signal is caught.
	sent := false
	f.afterGetJob = func() {
		if !sent {
			sent = true
			if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
				t.Error(err)
			}
		}
	}
	code, msgs := supervise(t, nil, f, SuperviseOptions{RunDir: t.TempDir(), CheckpointSignal: syscall.SIGUSR1, poll: time.Millisecond})
	if code != 0 || len(f.checkpoints) != 1 || !strings.Contains(msgs, "torpor: checkpoint j/1 (signal) committed in ") {
		t.Errorf("code %d, checkpoints %v, messages:\n%s", code, f.checkpoints, msgs)
	}
}

func TestSuperviseInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := &fakeCoordinator{job: func(int) *apiv1.Job { t.Error("GetJob after the interrupt"); return nil }}
	code, msgs := supervise(t, ctx, f, SuperviseOptions{RunDir: t.TempDir(), poll: time.Hour})
	if code != 130 || !strings.HasSuffix(msgs, "torpor: interrupted; job j is left to the coordinator (see `torpor ps`)\n") {
		t.Errorf("code %d, messages %q", code, msgs)
	}
}

func TestSuperviseRunError(t *testing.T) {
	f := &fakeCoordinator{runErr: status.Error(codes.InvalidArgument, "unknown host h9")}
	var msgs bytes.Buffer
	_, err := Supervise(context.Background(), f, &apiv1.RunRequest{Spec: testSpec}, &msgs, SuperviseOptions{})
	if err == nil || err.Error() != "unknown host h9" || msgs.Len() != 0 {
		t.Errorf("err %v, messages %q", err, msgs.String())
	}
}

func TestTailer(t *testing.T) {
	dir := t.TempDir()
	jobDir := filepath.Join(dir, "jobs", "j")
	if err := os.MkdirAll(jobDir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(node, s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(jobDir, node+".out"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	tail := newTailer(dir, "j", testSpec.Nodes, &out)
	tail.poll(context.Background()) // no files yet: nothing, no error
	if out.Len() != 0 {
		t.Fatalf("output from missing files: %q", out.String())
	}
	write("n0", "a1\na2\n")
	tail.poll(context.Background())
	write("n0", "a1\na2\na3\n")
	write("n1", "b1\n")
	tail.poll(context.Background())
	if want := "a1\na2\na3\nb1\n"; out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
	// A restart cuts n0's file back to its size at the checkpoint; what the
	// job writes again is printed again.
	write("n0", "a1\n")
	tail.poll(context.Background())
	write("n0", "a1\na2 again\n")
	tail.poll(context.Background())
	tail.poll(context.Background())
	if want := "a1\na2\na3\nb1\na2 again\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
}

// TestSuperviseReconnects: the coordinator stops answering (the process
// that hosted it ended); Supervise connects again through Reconnect and
// follows the job on the next coordinator to its end. Without Reconnect
// it reports the error.
func TestSuperviseReconnects(t *testing.T) {
	gone := func(int) error { return status.Error(codes.Unavailable, "connection refused") }
	first := &fakeCoordinator{job: func(int) *apiv1.Job { return state(coordinator.StateRunning) }, getErr: gone}
	next := &fakeCoordinator{job: func(n int) *apiv1.Job {
		if n < 3 {
			return state(coordinator.StateRunning)
		}
		return state(coordinator.StateFinished)
	}}
	reconnects := 0
	reconnect := func(context.Context) (apiv1.CoordinatorClient, error) {
		reconnects++
		return next, nil
	}
	code, msgs := supervise(t, nil, first, SuperviseOptions{RunDir: t.TempDir(), Reconnect: reconnect, poll: time.Millisecond})
	if code != 0 || reconnects != 1 || next.getJobs != 3 ||
		!strings.Contains(msgs, "torpor: the coordinator went away; reconnecting to follow job j\n") || !strings.HasSuffix(msgs, "torpor: job j finished\n") {
		t.Errorf("code %d, %d reconnects, %d calls on the next coordinator, messages %q", code, reconnects, next.getJobs, msgs)
	}

	lone := &fakeCoordinator{job: first.job, getErr: gone}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Supervise(ctx, lone, &apiv1.RunRequest{Spec: testSpec}, &bytes.Buffer{}, SuperviseOptions{RunDir: t.TempDir(), poll: time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("without Reconnect: %v, want the coordinator's error", err)
	}
}

// TestTailerRelay: output files this process cannot read come through the
// coordinator (tailer.relay), chunk after chunk within one poll, and a file
// a restart cut back is followed from its new end, as a local one is.
func TestTailerRelay(t *testing.T) {
	remote := map[string]string{}
	const chunk = 4 // the relay's answers are this short: several rounds per poll
	calls := 0
	var out bytes.Buffer
	tail := newTailer(t.TempDir(), "j", testSpec.Nodes, &out)
	tail.relay = func(_ context.Context, offsets map[string]int64) (*apiv1.OutputReply, error) {
		calls++
		rep := &apiv1.OutputReply{}
		for node, off := range offsets {
			s, ok := remote[node]
			if !ok {
				continue // not started yet: no answer for it
			}
			o := &apiv1.NodeOutput{Node: node, Size: int64(len(s))}
			if off < int64(len(s)) {
				o.Data = []byte(s[off:min(off+chunk, int64(len(s)))])
			}
			rep.Nodes = append(rep.Nodes, o)
		}
		return rep, nil
	}
	tail.poll(context.Background())
	if out.Len() != 0 {
		t.Fatalf("output before any: %q", out.String())
	}
	remote["n0"] = "a1\na2\n"
	remote["n1"] = "b1\n"
	tail.poll(context.Background())
	got := out.String()
	if len(got) != len("a1\na2\nb1\n") || !strings.Contains(got, "b1\n") || !strings.Contains(got, "a2\n") {
		t.Fatalf("after one poll: %q", got)
	}
	remote["n0"] = "a1\n" // restarted from a checkpoint taken after a1
	tail.poll(context.Background())
	remote["n0"] = "a1\na2 again\n"
	tail.poll(context.Background())
	if !strings.HasSuffix(out.String(), "a2 again\n") || strings.Count(out.String(), "a2") != 2 {
		t.Fatalf("after a restart: %q", out.String())
	}
	if calls < 4 {
		t.Fatalf("%d relay calls: the chunks were not asked for again within a poll", calls)
	}
}

// eventsCoordinator is a fakeCoordinator whose job's events can be
// followed: each value sent on events is the next one.
type eventsCoordinator struct {
	*fakeCoordinator
	events chan *apiv1.Event
}

func (e *eventsCoordinator) Events(ctx context.Context, _ *apiv1.EventsRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[apiv1.Event], error) {
	return &eventStream{ctx: ctx, events: e.events}, nil
}

type eventStream struct {
	grpc.ServerStreamingClient[apiv1.Event] // nil: only Recv is called
	ctx                                     context.Context
	events                                  chan *apiv1.Event
}

func (s *eventStream) Recv() (*apiv1.Event, error) {
	select {
	case e := <-s.events:
		return e, nil
	case <-s.ctx.Done():
		return nil, status.FromContextError(s.ctx.Err()).Err()
	}
}

// TestFollowByEvents: where the coordinator's events can be followed, the
// job's state is read at the stream's first message and at each event, and
// at no other time while the job runs (the timers here are an hour); the
// output is copied as the job ends.
func TestFollowByEvents(t *testing.T) {
	dir := t.TempDir()
	writeOutput(t, dir, "n1", "done\n")
	events := make(chan *apiv1.Event, 1)
	events <- &apiv1.Event{Type: "follow"}
	f := &fakeCoordinator{job: func(n int) *apiv1.Job {
		if n == 1 {
			return state(coordinator.StateRunning)
		}
		return state(coordinator.StateFinished)
	}}
	f.afterGetJob = func() {
		if f.getJobs == 1 {
			events <- &apiv1.Event{Job: "j", Type: "state", From: "running", To: "finished"}
		}
	}
	var output bytes.Buffer
	code, msgs := supervise(t, nil, &eventsCoordinator{f, events}, SuperviseOptions{RunDir: dir, Output: &output, poll: time.Hour, settled: time.Hour})
	if code != 0 || f.getJobs != 2 || !strings.HasSuffix(msgs, "torpor: job j finished\n") || output.String() != "done\n" {
		t.Errorf("code %d, %d GetJob calls (want 2), output %q, messages %q", code, f.getJobs, output.String(), msgs)
	}
}

// TestFollowWithoutEvents: a coordinator whose events cannot be followed
// has the job's state read every poll, not every settled.
func TestFollowWithoutEvents(t *testing.T) {
	f := &fakeCoordinator{job: func(n int) *apiv1.Job {
		if n < 3 {
			return state(coordinator.StateRunning)
		}
		return state(coordinator.StateFinished)
	}}
	code, msgs := supervise(t, nil, f, SuperviseOptions{RunDir: t.TempDir(), poll: time.Millisecond, settled: time.Hour})
	if code != 0 || f.getJobs != 3 || !strings.HasSuffix(msgs, "torpor: job j finished\n") {
		t.Errorf("code %d, %d GetJob calls (want 3), messages %q", code, f.getJobs, msgs)
	}
}
