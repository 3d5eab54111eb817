package coordinator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

// types lists the types of the kept events of job, oldest first.
func types(c *Coordinator, job string) []string {
	evs, _ := c.History(EventFilter{Job: job})
	var out []string
	for _, e := range evs {
		s := e.Type
		if e.Type == EventState {
			s += ":" + string(e.To)
		}
		out = append(out, s)
	}
	return out
}

func TestEventsRecordOperations(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	m := f.c.EnableMetrics(nil)
	ctx := context.Background()
	if _, err := f.c.Checkpoint(ctx, "job1", CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	f.agents["h1"].mu.Lock()
	f.agents["h1"].fail[PhaseDump] = errors.New("injected")
	f.agents["h1"].mu.Unlock()
	if _, err := f.c.Checkpoint(ctx, "job1", CheckpointOptions{}); err == nil {
		t.Fatal("a checkpoint whose dump fails succeeded")
	}
	f.agents["h1"].mu.Lock()
	delete(f.agents["h1"].fail, PhaseDump)
	f.agents["h1"].mu.Unlock()
	if err := f.c.Migrate(ctx, "job1", "n0", "h3"); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Migrate(ctx, "job1", "n0", "h3"); err == nil {
		t.Fatal("a migration to the host the job-node is on succeeded")
	}
	want := []string{
		"state:starting", "state:running",
		"state:checkpointing", "state:running", "checkpoint",
		"state:checkpointing", "state:running", "checkpoint-failed",
		"state:migrating", "state:running", "migration",
		"state:migrating", "state:running", "migration-failed",
	}
	if got := types(f.c, "job1"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events:\n got %v\nwant %v", got, want)
	}
	evs, _ := f.c.History(EventFilter{Job: "job1"})
	for _, e := range evs {
		switch e.Type {
		case EventCheckpoint:
			if e.Handle != "job1/000001" || len(e.Phases) == 0 || e.Phases["dump"] <= 0 {
				t.Errorf("checkpoint event %+v: want its handle and phases", e)
			}
		case EventCheckpointFailed:
			if e.FailedPhase != "dump" || !strings.Contains(e.Error, "injected") {
				t.Errorf("checkpoint-failed event %+v: want phase dump and the error", e)
			}
		case EventMigration:
			if e.Node != "n0" || e.FromHost != "h0" || e.ToHost != "h3" {
				t.Errorf("migration event %+v", e)
			}
		}
		if e.Owner != 1000 {
			t.Errorf("event %+v: owner %d, want 1000", e, e.Owner)
		}
	}
	// Counted by the registry: read back through a scrape.
	scrape, err := testutil.CollectAndFormat(m.Registry, expfmt.TypeTextPlain, "torpor_operations_total", "torpor_phase_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		`torpor_operations_total{operation="checkpoint",reason="none",result="ok"} 1`,
		`torpor_operations_total{operation="checkpoint",reason="dump",result="failed"} 1`,
		`torpor_operations_total{operation="migration",reason="none",result="ok"} 1`,
		`torpor_operations_total{operation="migration",reason="invalid",result="refused"} 1`,
		`torpor_phase_duration_seconds_count{operation="checkpoint",phase="dump"} 2`,
		`torpor_phase_duration_seconds_count{operation="checkpoint",phase="commit"} 1`,
		`torpor_phase_duration_seconds_count{operation="migration",phase="restore"} 1`,
	} {
		if !strings.Contains(string(scrape), line) {
			t.Errorf("no %s in the scrape:\n%s", line, scrape)
		}
	}
}

func TestEventsPersistedAndBounded(t *testing.T) {
	dir := t.TempDir()
	l, err := newEventLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.perJob != MaxJobEvents || l.total != MaxEvents {
		t.Fatalf("bounds %d, %d; want MaxJobEvents, MaxEvents", l.perJob, l.total)
	}
	var saveErrs []error
	l.saveFailed = func(err error) { saveErrs = append(saveErrs, err) }
	const perJob, total = 20, 50
	l.perJob, l.total = perJob, total
	for i := 0; i < perJob+10; i++ {
		l.add(Event{Job: "a", Type: EventState, To: StateRunning, Time: time.Unix(int64(i), 0)})
	}
	for i := 0; i < 5; i++ {
		l.add(Event{Job: "b", Type: EventCheckpoint})
		l.add(Event{Job: "b", Type: EventProgress}) // never kept
	}
	l.flush()
	if saveErrs != nil {
		t.Fatalf("writing the history: %v", saveErrs)
	}
	a, _ := l.history(func(e Event) bool { return e.Job == "a" })
	b, _ := l.history(func(e Event) bool { return e.Job == "b" })
	if len(a) != perJob || a[0].Seq != 11 || len(b) != 5 {
		t.Fatalf("kept %d of a (first seq %d), %d of b; want %d, 11, 5", len(a), a[0].Seq, len(b), perJob)
	}
	// A coordinator that starts again reads the history back and numbers on
	// after the last kept event (progress events are never kept).
	last := b[len(b)-1].Seq
	l2, err := newEventLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	l2.perJob, l2.total = perJob, total
	all, last2 := l2.history(func(Event) bool { return true })
	if len(all) != perJob+5 || last2 != last {
		t.Fatalf("after a restart: %d events up to %d; want %d up to %d", len(all), last2, perJob+5, last)
	}
	l2.add(Event{Job: "b", Type: EventRestart})
	l2.flush()
	if all, _ := l2.history(func(Event) bool { return true }); all[len(all)-1].Seq != last+1 {
		t.Fatalf("next event numbered %d, want %d", all[len(all)-1].Seq, last+1)
	}
	// Written atomically: no temporary file is left.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != eventsFile {
		t.Fatalf("state directory holds %v", ents)
	}
	// The bound over every job.
	for i := 0; i < total+1; i++ {
		l2.add(Event{Job: fmt.Sprintf("j%d", i), Type: EventState})
	}
	if all, _ := l2.history(func(Event) bool { return true }); len(all) != total {
		t.Fatalf("%d events kept, want %d", len(all), total)
	}
	l2.flush() // before the file is replaced below
	// A history that cannot be read stops the coordinator, saying what to do.
	if err := os.WriteFile(filepath.Join(dir, eventsFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newEventLog(dir); err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("a corrupt history: %v", err)
	}
}

// A history that could not be written is reported, kept in memory and
// written whole by the next write.
func TestEventsWriteFailureRetried(t *testing.T) {
	dir := t.TempDir()
	l, err := newEventLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	var saveErrs []error
	l.saveFailed = func(err error) { saveErrs = append(saveErrs, err) }
	// A directory where the file goes: the rename fails.
	if err := os.Mkdir(filepath.Join(dir, eventsFile), 0o700); err != nil {
		t.Fatal(err)
	}
	l.add(Event{Job: "a", Type: EventCheckpoint, Handle: "a/1"})
	l.flush()
	if len(saveErrs) != 1 {
		t.Fatalf("%d write errors reported, want 1: %v", len(saveErrs), saveErrs)
	}
	if err := os.Remove(filepath.Join(dir, eventsFile)); err != nil {
		t.Fatal(err)
	}
	l.add(Event{Job: "a", Type: EventCheckpoint, Handle: "a/2"})
	l.flush()
	l2, err := newEventLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := l2.history(func(Event) bool { return true })
	if len(all) != 2 || all[0].Handle != "a/1" || all[1].Handle != "a/2" {
		t.Fatalf("history read back: %+v; want a/1 and a/2", all)
	}
}

// BenchmarkEventAdd: what adding one event costs its caller (who holds the
// coordinator's lock) with the history at its bound, each add after the
// previous one's write ended (as events come in an operation: ms apart);
// add-ms is the add, write-ms until it was on disk. -benchtime 50x.
func BenchmarkEventAdd(b *testing.B) {
	l, err := newEventLog(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ph := map[string]int64{"prepare": 1e6, "freeze": 2e6, "drain": 3e6, "lock": 4e6, "dump": 5e8, "commit": 1e7, "unlock": 1e6, "thaw": 1e6}
	ev := func(job string) Event {
		return Event{Time: time.Now(), Job: job, Type: EventCheckpoint, Handle: job + "/000001", Bytes: 1 << 30, Phases: ph}
	}
	for i := 0; i < MaxEvents; i++ {
		l.add(ev(fmt.Sprintf("job-%d", i%20)))
	}
	l.flush()
	var add, write time.Duration
	for b.Loop() {
		start := time.Now()
		l.add(ev("job-3"))
		added := time.Now()
		l.flush()
		add, write = add+added.Sub(start), write+time.Since(added)
	}
	b.ReportMetric(float64(add.Microseconds())/1000/float64(b.N), "add-ms")
	b.ReportMetric(float64(write.Microseconds())/1000/float64(b.N), "write-ms")
}

func TestEventsFollow(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, after := f.c.History(EventFilter{})
	got := make(chan Event, 100)
	go func() {
		_ = f.c.Follow(ctx, after, EventFilter{Job: "job1", Progress: true}, func(e Event) error { got <- e; return nil })
	}()
	if _, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	var phases []string
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-got:
			if e.Type == EventProgress && e.Done {
				phases = append(phases, e.Phase)
			}
			if e.Type == EventCheckpoint {
				want := "prepare freeze drain lock dump commit unlock thaw"
				if strings.Join(phases, " ") != want {
					t.Fatalf("progress: %v, want %s", phases, want)
				}
				return
			}
		case <-deadline:
			t.Fatalf("no checkpoint event; progress so far %v", phases)
		}
	}
}
