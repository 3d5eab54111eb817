package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// Event types. The history (`torpor events`) keeps every type but
// EventProgress, which only followers of a running operation see.
const (
	EventState            = "state"             // a job moved from one state to another
	EventCheckpoint       = "checkpoint"        // a checkpoint was committed
	EventCheckpointFailed = "checkpoint-failed" // a checkpoint was aborted, or its job could not resume
	EventRestart          = "restart"           // a job was restored from a checkpoint
	EventRestartFailed    = "restart-failed"
	EventMigration        = "migration" // a job-node moved to another host
	EventMigrationFailed  = "migration-failed"
	EventProgress         = "progress" // a phase of a running operation began, advanced or ended (not kept)
	// A host-local checkpoint's images were copied to every replica, or
	// not (Error says what is missing); Bytes is what was copied.
	EventReplicated        = "replicated"
	EventReplicationFailed = "replication-failed"
	// A host-local checkpoint the catalog lacked came back from a shim
	// (Options.RecoverCatalog).
	EventRecovered = "recovered"
	// A restart found a host's copy of a job-node's images of a host-local
	// checkpoint corrupt (Node, FromHost: the host, Error: what failed);
	// that host's shim set it aside and the restart went on from another
	// host's copy.
	EventCopySetAside = "copy-set-aside"
	// A copy of a job-node that a shim held where the registry says none
	// may be was destroyed (Node, FromHost: its host, Reason: why it was a
	// stray; see Coordinator.DestroyStrays).
	EventStrayDestroyed = "stray-destroyed"
)

// Event is one entry of the coordinator's history. Which fields are set
// depends on Type; docs/observability.md has the table.
type Event struct {
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Job   string    `json:"job"`
	Owner int       `json:"owner"`
	Type  string    `json:"type"`
	// state: the move and why.
	From   State  `json:"from,omitempty"`
	To     State  `json:"to,omitempty"`
	Reason string `json:"reason,omitempty"`
	// checkpoint, restart: the checkpoint, its size and the phase timings.
	Handle string           `json:"handle,omitempty"`
	Bytes  int64            `json:"bytes,omitempty"`
	Phases map[string]int64 `json:"phases_ns,omitempty"`
	// migration: the job-node, its old and new host.
	Node     string `json:"node,omitempty"`
	FromHost string `json:"from_host,omitempty"`
	ToHost   string `json:"to_host,omitempty"`
	// Mode is stop-copy or post-copy; DowntimeNS the time the job was
	// frozen, LastPageNS (post-copy) the time from the freeze until the
	// destination had every page.
	Mode       string `json:"mode,omitempty"`
	DowntimeNS int64  `json:"downtime_ns,omitempty"`
	LastPageNS int64  `json:"last_page_ns,omitempty"`
	// *-failed: the error, and the phase it failed in.
	Error       string `json:"error,omitempty"`
	FailedPhase string `json:"failed_phase,omitempty"`
	// progress: the operation, its phase, whether the phase ended, its
	// time so far and the bytes it moved so far.
	Operation string `json:"operation,omitempty"`
	Phase     string `json:"phase,omitempty"`
	Done      bool   `json:"done,omitempty"`
	ElapsedNS int64  `json:"elapsed_ns,omitempty"`
}

// The history's bounds: at most MaxJobEvents per job and MaxEvents in all;
// the oldest go first.
const (
	MaxJobEvents = 200
	MaxEvents    = 2000
	// recentEvents is how many events, progress included, followers can
	// catch up on.
	recentEvents = 1024
)

const eventsFile = "events.json"

// eventsOnDisk is events.json.
type eventsOnDisk struct {
	Format int     `json:"format"`
	Next   uint64  `json:"next_seq"`
	Events []Event `json:"events"`
}

// eventLog is the coordinator's history: kept in memory, bounded, read back
// when a coordinator starts. It is written to the state directory behind
// the events, not by whoever adds one: a writer goroutine writes the whole
// history atomically (with its fsyncs) while events were added since its
// last write, then ends. Rewriting it in add took 11-18 ms per event here
// at the 2000-event bound (three runs beside an e2e test; the write alone,
// BenchmarkEventAdd's write-ms, is as long), and events are added with the
// coordinator's lock held, three times in every checkpoint (two state
// changes and the checkpoint). flush waits for the writer.
type eventLog struct {
	path string // "" = not persisted
	// perJob and total are the bounds: MaxJobEvents and MaxEvents.
	perJob, total int
	// saveFailed is told when the history could not be written (the
	// events stay in memory; the next write tries again).
	saveFailed func(error)

	mu      sync.Mutex
	next    uint64
	kept    []Event // the history, oldest first
	recent  []Event // the last recentEvents events, progress included
	changed chan struct{}
	onEvent func(typ string)
	// dirty: kept changed since the writer last took it. writing: a writer
	// runs; idle is closed when it ends.
	dirty, writing bool
	idle           chan struct{}
	// keptNext is the file's next_seq: the number after the newest kept
	// event (progress events are numbered but never written).
	keptNext uint64
}

func newEventLog(stateDir string) (*eventLog, error) {
	l := &eventLog{next: 1, changed: make(chan struct{}), perJob: MaxJobEvents, total: MaxEvents}
	if stateDir == "" {
		return l, nil
	}
	l.path = filepath.Join(stateDir, eventsFile)
	data, err := os.ReadFile(l.path)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read event history: %w", err)
	}
	var d eventsOnDisk
	if err := json.Unmarshal(data, &d); err != nil || d.Format != 1 {
		return nil, fmt.Errorf("parse event history %s: %v (format %d; move it away to start with an empty history)", l.path, err, d.Format)
	}
	l.kept = d.Events
	l.next = d.Next
	for _, e := range l.kept {
		if e.Seq >= l.next {
			l.next = e.Seq + 1
		}
	}
	return l, nil
}

// add records an event. A kept event is written to the history file in
// the background (see eventLog).
func (l *eventLog) add(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq = l.next
	l.next++
	l.recent = append(l.recent, e)
	if over := len(l.recent) - recentEvents; over > 0 {
		l.recent = slices.Delete(l.recent, 0, over) // in place: follow copies
	}
	close(l.changed)
	l.changed = make(chan struct{})
	if l.onEvent != nil {
		l.onEvent(e.Type)
	}
	if e.Type == EventProgress {
		return
	}
	l.kept = append(l.kept, e)
	l.keptNext = l.next
	l.trim(e.Job)
	if l.path == "" {
		return
	}
	l.dirty = true
	if !l.writing {
		l.writing = true
		l.idle = make(chan struct{})
		go l.write()
	}
}

// write writes the history while events were kept since it last took it,
// then ends. One runs at a time (l.writing), so writes never overtake.
func (l *eventLog) write() {
	for {
		l.mu.Lock()
		if !l.dirty {
			l.writing = false
			close(l.idle)
			l.mu.Unlock()
			return
		}
		l.dirty = false
		// Events are never changed once added: a copy of the slice is a
		// snapshot, encoded without the lock.
		d := eventsOnDisk{Format: 1, Next: l.keptNext, Events: append([]Event(nil), l.kept...)}
		l.mu.Unlock()
		data, err := json.Marshal(d)
		if err == nil {
			err = atomicfile.Write(l.path, data, 0o600)
		} else {
			err = fmt.Errorf("encode event history: %w", err)
		}
		if err != nil && l.saveFailed != nil {
			l.saveFailed(err)
		}
	}
}

// flush waits until every event kept before it was called is written (or
// its write failed).
func (l *eventLog) flush() {
	l.mu.Lock()
	idle := l.idle
	writing := l.writing
	l.mu.Unlock()
	if writing {
		<-idle
	}
}

// trim applies the bounds after an event of job was added.
func (l *eventLog) trim(job string) {
	n := 0
	for _, e := range l.kept {
		if e.Job == job {
			n++
		}
	}
	// In place: the writer encodes a copy, history returns copies.
	if n > l.perJob {
		for i, e := range l.kept {
			if e.Job == job {
				l.kept = slices.Delete(l.kept, i, i+1)
				break
			}
		}
	}
	if over := len(l.kept) - l.total; over > 0 {
		l.kept = slices.Delete(l.kept, 0, over)
	}
}

// history returns the kept events that match, oldest first, and the
// sequence number after which a follower goes on.
func (l *eventLog) history(match func(Event) bool) ([]Event, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, e := range l.kept {
		if match(e) {
			out = append(out, e)
		}
	}
	return out, l.next - 1
}

// follow calls send for every event after seq that matches, as they come,
// until ctx ends or send fails.
func (l *eventLog) follow(ctx context.Context, after uint64, match func(Event) bool, send func(Event) error) error {
	for {
		l.mu.Lock()
		var out []Event
		for _, e := range l.recent {
			if e.Seq > after && match(e) {
				out = append(out, e)
			}
		}
		if len(l.recent) > 0 {
			after = max(after, l.recent[len(l.recent)-1].Seq)
		}
		changed := l.changed
		l.mu.Unlock()
		for _, e := range out {
			if err := send(e); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// event records e for the job it names, filling in its time and owner.
func (c *Coordinator) event(e Event) {
	e.Time = c.now()
	if e.Owner == 0 {
		c.mu.Lock()
		if j, ok := c.jobs[e.Job]; ok {
			e.Owner = j.Spec.Owner
		}
		c.mu.Unlock()
	}
	c.eventLocked(e)
}

// eventLocked is event for a caller that holds c.mu and set e.Owner.
func (c *Coordinator) eventLocked(e Event) {
	if e.Time.IsZero() {
		e.Time = c.now()
	}
	c.events.add(e)
}

// Changed is closed by the next event of any job (progress events too). A
// job's state only changes with an event (noteStatesLocked), so a caller
// that takes Changed before it reads a job learns of every change after
// that read without polling.
func (c *Coordinator) Changed() <-chan struct{} {
	c.events.mu.Lock()
	defer c.events.mu.Unlock()
	return c.events.changed
}

// noteStatesLocked records a state event for every job whose state changed
// since the last call (c.mu held). Every state change is persisted through
// saveLocked, which calls this: no move goes unrecorded.
func (c *Coordinator) noteStatesLocked() {
	for id, j := range c.jobs {
		prev, seen := c.lastState[id]
		if seen && prev == j.State {
			continue
		}
		c.lastState[id] = j.State
		c.eventLocked(Event{Job: id, Owner: j.Spec.Owner, Type: EventState, From: prev, To: j.State, Reason: j.Reason, Time: j.Updated})
	}
}

// EventFilter selects events for Events.
type EventFilter struct {
	Job string // "" = every job
	// UID is who asks: non-root callers see their own jobs' events only.
	UID int
	// Progress includes progress events (followers only).
	Progress bool
}

func (f EventFilter) match(e Event) bool {
	return (f.Job == "" || e.Job == f.Job) && (f.UID == 0 || e.Owner == f.UID) && (f.Progress || e.Type != EventProgress)
}

// History returns the kept events that f selects, oldest first, and the
// sequence number to follow from.
func (c *Coordinator) History(f EventFilter) ([]Event, uint64) {
	return c.events.history(f.match)
}

// Follow sends every event f selects after seq as it happens, until ctx
// ends or send fails.
func (c *Coordinator) Follow(ctx context.Context, after uint64, f EventFilter, send func(Event) error) error {
	return c.events.follow(ctx, after, f.match, send)
}
