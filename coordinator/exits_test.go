package coordinator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

// tellingAgent is a fake shim that tells of its job-nodes' exits: each
// value sent on exits is one.
type tellingAgent struct {
	*fakeAgent
	exits chan agentapi.NodeRef
	// listening gets a value once the coordinator was told it listens.
	listening chan struct{}
}

func (a tellingAgent) WatchExits(ctx context.Context, live func(), exited func(agentapi.NodeRef)) error {
	live()
	a.listening <- struct{}{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-a.exits:
			exited(r)
		}
	}
}

// TestWatchToldOfExits: with every shim of a job telling of exits, the job
// ends as soon as a job-node's exit is told, with no tick of the poll (its
// interval here is an hour).
func TestWatchToldOfExits(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	exits := make(chan agentapi.NodeRef, 1)
	listening := make(chan struct{}, len(f.agents))
	for h, fa := range f.agents {
		f.c.AddAgent(h, tellingAgent{fa, exits, listening})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	// The watches start as Watch starts them, but before it runs: nothing
	// polls until the exit is told.
	f.c.watchExits(ctx, &wg)
	for range f.agents {
		select {
		case <-listening:
		case <-ctx.Done():
			t.Fatal("the coordinator never listened to every shim's exits")
		}
	}
	if !f.c.toldOfExits(f.spec) {
		t.Fatal("the job's shims listen, but the job counts as polled")
	}
	select {
	case <-f.c.exits.kick: // the listening's own poll
	default:
	}
	f.exit("h1", "job1/n1", 3)
	exits <- agentapi.NodeRef{Job: "job1", Node: "n1"}
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.c.Watch(ctx, time.Hour)
	}()
	for {
		changed := f.c.Changed()
		j, err := f.c.Job("job1")
		if err != nil {
			t.Fatal(err)
		}
		if j.State == StateFailed {
			if j.ExitCode != 3 {
				t.Fatalf("job failed with %d (%s), want n1's 3", j.ExitCode, j.Reason)
			}
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("job1 is %s a minute after n1's exit was told", j.State)
		}
	}
}

// TestExitDuringOperation: an operation's end has the job polled at once:
// an exit told while the operation held the job was not acted on then.
func TestExitDuringOperation(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	f.c.mu.Lock()
	f.c.busy["job1"] = true
	f.c.mu.Unlock()
	f.c.end("job1", StateRunning, nil)
	select {
	case <-f.c.exits.kick:
	default:
		t.Fatal("the end of an operation did not have the job polled")
	}
}
