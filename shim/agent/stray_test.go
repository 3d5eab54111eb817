package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
)

// cutOffDestroy is a shim whose Destroy does not reach it while cut is set,
// as when the network between it and the coordinator is cut right then.
type cutOffDestroy struct {
	agentapi.Agent
	cut atomic.Bool
}

func (c *cutOffDestroy) Destroy(ctx context.Context, ref agentapi.NodeRef) error {
	if c.cut.Load() {
		return agentapi.ErrUnreachable
	}
	return c.Agent.Destroy(ctx, ref)
}

// TestMigrateOverStray: a migration that fails after its destination
// restored the job-node, while that destination's shim does not get the
// rollback's destroy, leaves a real copy there, frozen and locked (no shim
// registration in this test would ever clear it). The next migration to
// that host has the shim refuse the restore with ErrExists before it does
// anything, destroys the copy, restores the job-node there and the ring
// runs on.
func TestMigrateOverStray(t *testing.T) {
	var failRestore atomic.Bool
	h3 := &cutOffDestroy{}
	e := newE2E(t, 3, 2, func(o *coordinator.Options) {
		o.Faults.AfterRestore = func(job, node string) error {
			if failRestore.Load() {
				return errors.New("injected after the restore")
			}
			return nil
		}
		h3.Agent = o.Agents["h3"]
		o.Agents["h3"] = h3
	})
	ctx := context.Background()
	if err := e.c.Start(ctx, e.spec); err != nil {
		t.Fatal(err)
	}
	e.progress("started")
	failRestore.Store(true)
	h3.cut.Store(true)
	if err := e.c.Migrate(ctx, "ring", "n1", "h3"); err == nil {
		t.Fatal("the migration succeeded despite the fault after its restore")
	}
	failRestore.Store(false)
	h3.cut.Store(false)
	if !slices.Contains(e.agents["h3"].JobNodes(), (agentapi.NodeRef{Job: "ring", Node: "n1"})) {
		t.Fatal("h3 holds no copy of n1 after the failed migration: the test does not make the stray it is about")
	}
	e.progress("the migration rolled back")
	if err := e.c.Migrate(ctx, "ring", "n1", "h3"); err != nil {
		t.Fatalf("migration onto the host with the stray copy: %v", err)
	}
	e.progress("n1 migrated onto h3 over the stray")
	j, _ := e.c.Job("ring")
	if n1, _ := j.Spec.Node("n1"); j.State != coordinator.StateRunning || n1.Host != "h3" {
		t.Fatalf("job %s with n1 on %s, want running on h3", j.State, n1.Host)
	}
	if got := e.agents["h2"].JobNodes(); len(got) != 0 {
		t.Fatalf("h2 still holds %v", got)
	}
	evs, _ := e.c.History(coordinator.EventFilter{Job: "ring"})
	var strays []string
	for _, ev := range evs {
		if ev.Type == coordinator.EventStrayDestroyed {
			strays = append(strays, ev.Node+"@"+ev.FromHost+": "+ev.Reason)
		}
	}
	if len(strays) != 1 || !strings.HasPrefix(strays[0], "n1@h3: it was in the way of the migration from h2") {
		t.Fatalf("stray events %q, want the one of n1 on h3", strays)
	}
}
