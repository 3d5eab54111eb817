package coordinator

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

// TestWaitReturnsOnChange: Wait stays while the job runs, returns the job
// once it finished (woken by the change's event), and a Wait on a stopping
// coordinator ends as unavailable.
func TestWaitReturnsOnChange(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	stopping := make(chan struct{})
	s := &Server{C: f.c, Stopping: stopping}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctx = peer.NewContext(ctx, &peer.Peer{AuthInfo: PeerCred{UID: 1000, GID: 1000}})
	type result struct {
		j   *apiv1.Job
		err error
	}
	waitJob := func() <-chan result {
		out := make(chan result, 1)
		go func() {
			j, err := s.Wait(ctx, &apiv1.JobRef{Job: "job1"})
			out <- result{j, err}
		}()
		return out
	}
	done := waitJob()
	// Events of another kind wake Wait without ending it.
	f.c.mu.Lock()
	f.c.eventLocked(Event{Job: "job1", Owner: 1000, Type: EventCheckpoint, Handle: "job1/000001"})
	f.c.mu.Unlock()
	select {
	case r := <-done:
		t.Fatalf("Wait returned while job1 runs: %v, %v", r.j, r.err)
	default:
	}
	f.c.finish(ctx, f.spec, StateFinished, 0, "")
	r := <-done
	if r.err != nil || r.j.State != string(StateFinished) {
		t.Fatalf("Wait after the job finished: %v, %v", r.j, r.err)
	}

	f.c.mu.Lock()
	f.c.jobs["job1"].State = StateRunning
	f.c.mu.Unlock()
	done = waitJob()
	close(stopping)
	if r := <-done; status.Code(r.err) != codes.Unavailable {
		t.Fatalf("Wait on a stopping coordinator: %v, %v; want unavailable", r.j, r.err)
	}
}
