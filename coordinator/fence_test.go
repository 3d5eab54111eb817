package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

func TestFence(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	results := make([][]byte, 4)
	errs := make([]error, 4)
	for i := 0; i < 4; i++ { // node 1 contributes twice (a re-send after a reconnect)
		node := i
		if i == 3 {
			node = 1
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = f.c.Fence(ctx, agentapi.FenceRequest{Job: "job1", Node: node, Nodes: []int{0, 1, 2}, Signature: "job1:*", Seq: 0, Data: []byte(fmt.Sprintf("<%d>", node))})
		}()
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil || string(results[i]) != "<0><1><2>" {
			t.Fatalf("call %d: %q, %v", i, results[i], errs[i])
		}
	}
	// A repeat after completion gets the same answer at once.
	r, err := f.c.Fence(ctx, agentapi.FenceRequest{Job: "job1", Node: 2, Nodes: []int{0, 1, 2}, Signature: "job1:*", Seq: 0, Data: []byte("<2>")})
	if err != nil || string(r) != "<0><1><2>" {
		t.Fatalf("repeat: %q %v", r, err)
	}
	// An incomplete fence waits, bounded by the caller's context.
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	if _, err := f.c.Fence(short, agentapi.FenceRequest{Job: "job1", Node: 0, Nodes: []int{0, 1}, Signature: "job1:*", Seq: 1}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("incomplete fence = %v, want it to wait until the caller's deadline", err)
	}
	if _, err := f.c.Fence(ctx, agentapi.FenceRequest{Job: "job1", Node: 7, Nodes: []int{7}, Signature: "x", Seq: 0}); err == nil {
		t.Fatal("fence from a job-node the job does not have was accepted")
	}
	f.c.fences.forget("job1")
	if n := len(f.c.fences.m); n != 0 {
		t.Fatalf("%d fences left after forget", n)
	}
}
