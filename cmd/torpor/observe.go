package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/client"
)

// The JSON every verb prints with --json. docs/observability.md is the
// schema; e2e/observe_test.go checks each verb's output against it. Times
// are RFC 3339, durations nanoseconds (`_ns`), sizes bytes.

// jsonJob is one element of `torpor ps --json` (an array).
type jsonJob struct {
	Job            string     `json:"job"`
	State          string     `json:"state"`
	Reason         string     `json:"reason"`
	Owner          int        `json:"owner"`
	OwnerName      string     `json:"owner_name"`
	Nodes          []jsonNode `json:"nodes"`
	LastCheckpoint string     `json:"last_checkpoint"`
	ExitCode       int        `json:"exit_code"`
	Created        time.Time  `json:"created"`
	Updated        time.Time  `json:"updated"`
}

type jsonNode struct {
	Name     string `json:"name"`
	Host     string `json:"host"`
	IP       string `json:"ip"`
	Hostname string `json:"hostname"`
}

func jobJSON(j *apiv1.Job) jsonJob {
	out := jsonJob{
		Job: j.Spec.GetId(), State: j.State, Reason: j.Reason, Owner: int(j.Spec.GetOwner()),
		OwnerName: userName(int(j.Spec.GetOwner())), Nodes: []jsonNode{}, LastCheckpoint: j.LastCheckpoint,
		ExitCode: int(j.ExitCode), Created: time.Unix(j.CreatedUnix, 0).UTC(), Updated: time.Unix(j.UpdatedUnix, 0).UTC(),
	}
	for _, n := range j.Spec.GetNodes() {
		out.Nodes = append(out.Nodes, jsonNode{Name: n.Name, Host: n.Host, IP: n.Ip, Hostname: n.Hostname})
	}
	return out
}

// jsonCheckpoint is one element of `torpor ls --json` (an array).
type jsonCheckpoint struct {
	Handle   string           `json:"handle"`
	Job      string           `json:"job"`
	Kind     string           `json:"kind"`
	Created  time.Time        `json:"created"`
	Bytes    int64            `json:"bytes"`
	Nodes    int              `json:"nodes"`
	Verified string           `json:"verified"`
	Phases   map[string]int64 `json:"phases_ns"`
	// Stored is where the images are: "shared" (the checkpoint
	// directory) or "host-local" (the shims' stores, Copies good copies
	// of the job-node with the fewest; Replicated when that is 2 or more).
	Stored     string `json:"stored"`
	Copies     int    `json:"copies,omitempty"`
	Replicated bool   `json:"replicated"`
	// SetAside lists the copies ("NODE on HOST") that failed the
	// verification of this listing and were set aside.
	SetAside []string `json:"set_aside,omitempty"`
}

// stored says where a checkpoint's images are, for `torpor ls`.
func stored(c *apiv1.Checkpoint) string {
	switch {
	case !c.HostLocal:
		return "shared"
	case c.Copies >= 2:
		return fmt.Sprintf("host-local, %d copies: replicated", c.Copies)
	case c.Copies == 1:
		return "host-local, 1 copy: not replicated"
	}
	return "host-local, no copy on a host that answers"
}

func checkpointJSON(c *apiv1.Checkpoint) jsonCheckpoint {
	j := jsonCheckpoint{
		Handle: c.Handle, Job: c.Job, Kind: c.Kind, Created: time.Unix(c.CreatedUnix, 0).UTC(), Bytes: c.Bytes,
		Nodes: int(c.Nodes), Verified: c.Verified, Phases: orEmpty(c.PhaseNanos),
		Stored: "shared", Copies: int(c.Copies), Replicated: !c.HostLocal || c.Copies >= 2, SetAside: c.SetAside,
	}
	if c.HostLocal {
		j.Stored = "host-local"
	}
	return j
}

// jsonCheckpointed is `torpor checkpoint --json` and `torpor suspend --json`.
type jsonCheckpointed struct {
	Job       string           `json:"job"`
	Handle    string           `json:"handle"`
	Kind      string           `json:"kind"`
	Bytes     int64            `json:"bytes"`
	Phases    map[string]int64 `json:"phases_ns"`
	ElapsedNS int64            `json:"elapsed_ns"`
}

// jsonRestarted is `torpor restart --json` and `torpor resume --json`.
type jsonRestarted struct {
	Job        string   `json:"job"`
	Checkpoint string   `json:"checkpoint"`
	Bytes      int64    `json:"bytes"`
	Skipped    []string `json:"skipped"`
	Moved      []string `json:"moved"`
	// SetAside: copies of a host-local checkpoint found corrupt and set
	// aside ("NODE on HOST"); other hosts' copies were restored.
	SetAside  []string `json:"set_aside"`
	ElapsedNS int64    `json:"elapsed_ns"`
}

// jsonMigrated is `torpor migrate --json`.
type jsonMigrated struct {
	Job       string `json:"job"`
	Node      string `json:"node"`
	To        string `json:"to"`
	ElapsedNS int64  `json:"elapsed_ns"`
	// Mode is stop-copy or post-copy, ModeReason why; DowntimeNS the time
	// the job was frozen; LastPageNS (post-copy) from the freeze until the
	// destination had every page.
	Mode        string `json:"mode"`
	ModeReason  string `json:"mode_reason,omitempty"`
	DowntimeNS  int64  `json:"downtime_ns"`
	LastPageNS  int64  `json:"last_page_ns,omitempty"`
	Bytes       int64  `json:"bytes"`
	MemoryBytes int64  `json:"memory_bytes,omitempty"`
	// Streamed: the images went from shim to shim, not through the
	// checkpoint directory.
	Streamed bool `json:"streamed"`
}

// jsonEvent is one line of `torpor events --json` (JSON Lines: one object
// per line, so that --follow can stream).
type jsonEvent struct {
	Seq         uint64           `json:"seq"`
	Time        time.Time        `json:"time"`
	Job         string           `json:"job"`
	Owner       int              `json:"owner"`
	Type        string           `json:"type"`
	From        string           `json:"from,omitempty"`
	To          string           `json:"to,omitempty"`
	Reason      string           `json:"reason,omitempty"`
	Handle      string           `json:"handle,omitempty"`
	Bytes       int64            `json:"bytes,omitempty"`
	Phases      map[string]int64 `json:"phases_ns,omitempty"`
	Node        string           `json:"node,omitempty"`
	FromHost    string           `json:"from_host,omitempty"`
	ToHost      string           `json:"to_host,omitempty"`
	Error       string           `json:"error,omitempty"`
	FailedPhase string           `json:"failed_phase,omitempty"`
	Mode        string           `json:"mode,omitempty"`
	DowntimeNS  int64            `json:"downtime_ns,omitempty"`
	LastPageNS  int64            `json:"last_page_ns,omitempty"`
}

func eventJSON(e *apiv1.Event) jsonEvent {
	return jsonEvent{
		Seq: e.Seq, Time: time.Unix(0, e.TimeUnixNano).UTC(), Job: e.Job, Owner: int(e.Owner), Type: e.Type,
		From: e.From, To: e.To, Reason: e.Reason, Handle: e.Handle, Bytes: e.Bytes, Phases: e.PhaseNanos,
		Node: e.Node, FromHost: e.FromHost, ToHost: e.ToHost, Error: e.Error, FailedPhase: e.FailedPhase,
		Mode: e.Mode, DowntimeNS: e.DowntimeNanos, LastPageNS: e.LastPageNanos,
	}
}

func orEmpty[K comparable, V any](m map[K]V) map[K]V {
	if m == nil {
		return map[K]V{}
	}
	return m
}

func runEvents(ctx context.Context, args []string) error {
	fs := newFlagSet("events", "[JOB]")
	cf := addClientFlags(fs, true)
	follow := fs.Bool("follow", false, "after the history, print new events as they happen (until interrupted)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return exitError{2}
	}
	ss, err := connect(ctx, *cf.socket, embedOptions{})
	if err != nil {
		return err
	}
	defer ss.close(ctx, false)
	stream, err := ss.cl.Events(ctx, &apiv1.EventsRequest{Job: fs.Arg(0), Follow: *follow})
	if err != nil {
		return client.RPCErr(err)
	}
	var tw *tabwriter.Writer
	if !*cf.json {
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tJOB\tEVENT\tDETAILS")
	}
	enc := json.NewEncoder(os.Stdout)
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) || (err != nil && ctx.Err() != nil) {
			break
		}
		if err != nil {
			return client.RPCErr(err)
		}
		if *cf.json {
			if err := enc.Encode(eventJSON(e)); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", time.Unix(0, e.TimeUnixNano).Format("2006-01-02 15:04:05.000"), e.Job, e.Type, eventDetails(e))
		if *follow {
			tw.Flush()
		}
	}
	if tw != nil {
		return tw.Flush()
	}
	return nil
}

// eventDetails is the DETAILS column of `torpor events`.
func eventDetails(e *apiv1.Event) string {
	var parts []string
	add := func(format string, a ...any) { parts = append(parts, fmt.Sprintf(format, a...)) }
	switch e.Type {
	case "state":
		from := e.From
		if from == "" {
			from = "(new)"
		}
		add("%s -> %s", from, e.To)
	case "stray-destroyed":
		add("%s on %s", e.Node, e.FromHost)
	case "migration", "migration-failed":
		add("%s: %s -> %s", e.Node, e.FromHost, e.ToHost)
		if e.Mode != "" {
			add("%s", e.Mode)
		}
		if e.DowntimeNanos > 0 {
			add("downtime %s", time.Duration(e.DowntimeNanos).Round(time.Millisecond))
		}
		if e.LastPageNanos > 0 {
			add("last page %s", time.Duration(e.LastPageNanos).Round(time.Millisecond))
		}
	}
	if e.Handle != "" {
		add("%s", e.Handle)
	}
	if e.Bytes > 0 {
		add("%s", humanBytes(e.Bytes))
	}
	if len(e.PhaseNanos) > 0 {
		add("%s", phases(e.PhaseNanos))
	}
	if e.FailedPhase != "" {
		add("failed in %s", e.FailedPhase)
	}
	if e.Error != "" {
		add("error: %s", e.Error)
	} else if e.Reason != "" {
		add("reason: %s", e.Reason)
	}
	return strings.Join(parts, "  ")
}

// progress shows a running operation's phases on stderr, from the
// coordinator's progress events: on a terminal one line that is rewritten
// as the phase advances (bytes and rate during dump, verify and restore);
// otherwise one line per phase, when it ends.
type progress struct {
	w      io.Writer
	tty    bool
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	open   bool // a rewritten line is on the terminal
}

// isTerminal says whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// watchProgress follows job's progress events until stop is called. It
// returns once the coordinator listens, so that no phase is missed; a
// coordinator that cannot stream them (an older one) shows nothing.
func watchProgress(ctx context.Context, cl apiv1.CoordinatorClient, job string) *progress {
	p := &progress{w: os.Stderr, tty: isTerminal(os.Stderr), done: make(chan struct{})}
	ctx, p.cancel = context.WithCancel(ctx)
	stream, err := cl.Events(ctx, &apiv1.EventsRequest{Job: job, Follow: true, Progress: true, NoHistory: true})
	if err == nil {
		_, err = stream.Recv() // the marker: the coordinator follows now
	}
	if err != nil {
		close(p.done)
		return p
	}
	go func() {
		defer close(p.done)
		for {
			e, err := stream.Recv()
			if err != nil {
				return
			}
			if e.Type == "progress" {
				p.show(e)
			}
		}
	}()
	return p
}

func (p *progress) show(e *apiv1.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	elapsed := time.Duration(e.ElapsedNanos)
	line := fmt.Sprintf("torpor: %-8s", e.Phase)
	if e.Done {
		line += " " + elapsed.Round(time.Millisecond).String()
	} else if elapsed > 0 {
		line += " " + elapsed.Round(100*time.Millisecond).String() + " …"
	} else {
		line += " …"
	}
	if e.Bytes > 0 {
		line += "  " + humanBytes(e.Bytes)
		if elapsed > 0 {
			line += fmt.Sprintf("  %s/s", humanBytes(int64(float64(e.Bytes)/elapsed.Seconds())))
		}
	}
	switch {
	case p.tty:
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.open = !e.Done
		if e.Done {
			fmt.Fprintln(p.w)
		}
	case e.Done:
		fmt.Fprintln(p.w, line)
	}
}

// stop ends the watch and waits for it: nothing it prints comes after.
func (p *progress) stop() {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open {
		fmt.Fprintln(p.w)
		p.open = false
	}
}
