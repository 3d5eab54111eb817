package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

func TestProgressLines(t *testing.T) {
	events := []*apiv1.Event{
		{Type: "progress", Phase: "freeze"},
		{Type: "progress", Phase: "freeze", Done: true, ElapsedNanos: int64(3 * time.Millisecond)},
		{Type: "progress", Phase: "dump"},
		{Type: "progress", Phase: "dump", ElapsedNanos: int64(time.Second), Bytes: 64 << 20},
		{Type: "progress", Phase: "dump", Done: true, ElapsedNanos: int64(2 * time.Second), Bytes: 256 << 20},
	}
	tests := []struct {
		name string
		tty  bool
		want string
	}{
		{"not a terminal: one line per phase, at its end", false,
			"torpor: freeze   3ms\ntorpor: dump     2s  256.0M  128.0M/s\n"},
		{"a terminal: the line is rewritten as the phase advances", true,
			"\r\033[Ktorpor: freeze   …\r\033[Ktorpor: freeze   3ms\n" +
				"\r\033[Ktorpor: dump     …\r\033[Ktorpor: dump     1s …  64.0M  64.0M/s\r\033[Ktorpor: dump     2s  256.0M  128.0M/s\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			p := &progress{w: &buf, tty: tt.tty}
			for _, e := range events {
				p.show(e)
			}
			if got := buf.String(); got != tt.want {
				t.Fatalf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestEventDetails(t *testing.T) {
	got := eventDetails(&apiv1.Event{Type: "checkpoint", Handle: "j/000001", Bytes: 5 << 20, PhaseNanos: map[string]int64{"dump": int64(time.Second), "freeze": int64(time.Millisecond)}})
	if want := "j/000001  5.0M  freeze=1ms dump=1s"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := eventDetails(&apiv1.Event{Type: "state", To: "running"}); !strings.Contains(got, "(new) -> running") {
		t.Fatalf("got %q", got)
	}
	got = eventDetails(&apiv1.Event{Type: "stray-destroyed", Node: "n1", FromHost: "h3", Reason: "the job runs it on h1"})
	if want := "n1 on h3  reason: the job runs it on h1"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
