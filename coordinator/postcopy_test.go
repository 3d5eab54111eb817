package coordinator

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestPostCopyMode(t *testing.T) {
	const threshold = DefaultPostCopyThreshold
	for _, tc := range []struct {
		name       string
		opt        PostCopy
		memory     int64
		noPostCopy string // host whose shim cannot
		want       string
		reason     string
	}{
		{"auto-small", PostCopyAuto, threshold - 1, "", ModeStopCopy, "below the post-copy threshold"},
		{"auto-large", PostCopyAuto, threshold, "", ModePostCopy, "at least the post-copy threshold"},
		{"always-small", PostCopyAlways, 1 << 20, "", ModePostCopy, "--postcopy=always"},
		{"never-large", PostCopyNever, 1 << 30, "", ModeStopCopy, "--postcopy=never"},
		{"destination-cannot", PostCopyAlways, 1 << 30, "h3", ModeStopCopy, "shim of h3 cannot take part"},
		{"source-cannot", PostCopyAuto, 1 << 30, "h1", ModeStopCopy, "shim of h1 cannot take part"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "h0", "h1", "h2", "h3")
			f.agents["h1"].memory = tc.memory
			if tc.noPostCopy != "" {
				f.agents[tc.noPostCopy].noPostCopy = true
			}
			res, err := f.c.MigrateDetails(context.Background(), "job1", "n1", "h3", MigrateOptions{PostCopy: tc.opt})
			if err != nil {
				t.Fatal(err)
			}
			if res.Mode != tc.want || !strings.Contains(res.ModeReason, tc.reason) {
				t.Fatalf("mode %s (%s), want %s (%s)", res.Mode, res.ModeReason, tc.want, tc.reason)
			}
			f.assertRunning(t)
			f.assertNoPartial(t)
			lazy := f.agents["h3"].lazyFrom
			if (tc.want == ModePostCopy) != (len(lazy) == 1 && lazy[0] == "h1:7000") {
				t.Fatalf("h3 restored lazily from %v in mode %s", lazy, res.Mode)
			}
			if len(f.agents["h1"].snapshot()) != 0 || f.agents["h1"].serving("job1/n1") {
				t.Fatal("the source's copy of n1 is still on h1")
			}
			if res.Downtime <= 0 || (tc.want == ModePostCopy) != (res.LastPage >= res.Downtime && res.LastPage > 0) {
				t.Fatalf("downtime %v, last page %v in mode %s", res.Downtime, res.LastPage, res.Mode)
			}
		})
	}
}

// The source keeps its frozen, locked copy, still serving, until the
// destination has every page; the job runs meanwhile but stays busy.
func TestPostCopySourceOutlivesPages(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	f.agents["h1"].memory = 1 << 30
	f.agents["h3"].onPages = func() {
		src, ok := f.agents["h1"].snapshot()["job1/n1"]
		if !ok || !src.frozen || !src.locked || !f.agents["h1"].serving("job1/n1") {
			t.Errorf("while pages arrive, the source's copy is %+v (there %v), serving %v; want frozen, locked, serving", src, ok, f.agents["h1"].serving("job1/n1"))
		}
		dst := f.agents["h3"].snapshot()["job1/n1"]
		if dst.frozen || dst.locked {
			t.Errorf("while pages arrive, the destination is %+v; want running", dst)
		}
		if j, _ := f.c.Job("job1"); j.State != StateMigrating {
			t.Errorf("job is %s while pages arrive, want migrating", j.State)
		}
	}
	if _, err := f.c.MigrateDetails(context.Background(), "job1", "n1", "h3", MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.assertRunning(t)
	if len(f.agents["h1"].snapshot()) != 0 {
		t.Fatal("the source's copy outlived the migration")
	}
}

func TestPostCopyPagesLost(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	f.agents["h1"].memory = 1 << 30
	f.agents["h3"].fail[PhasePages] = errors.New("criu lazy-pages: page server connection reset")
	res, err := f.c.MigrateDetails(context.Background(), "job1", "n1", "h3", MigrateOptions{})
	if err == nil || !strings.Contains(err.Error(), "torpor restart job1") {
		t.Fatalf("migration whose pages were lost: %v", err)
	}
	if res.Mode != ModePostCopy || res.Downtime <= 0 {
		t.Fatalf("mode %s downtime %v", res.Mode, res.Downtime)
	}
	j, _ := f.c.Job("job1")
	if j.State != StateFailed || !strings.Contains(j.Reason, "lost its pages in flight") || !strings.Contains(j.Reason, "torpor restart job1") {
		t.Fatalf("job %s: %s", j.State, j.Reason)
	}
	for h, a := range f.agents {
		if len(a.snapshot()) != 0 || a.serving("job1/n1") {
			t.Fatalf("job-nodes left on %s: %v", h, a.snapshot())
		}
	}
	f.assertNoPartial(t)
}

// A destination that fails before the unlock rolls back to the source, as a
// stop-and-copy migration does; the source stops serving its pages.
func TestPostCopyRestoreFailsRollsBack(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	f.agents["h1"].memory = 1 << 30
	f.agents["h3"].fail[PhaseRestore] = errors.New("injected")
	_, err := f.c.MigrateDetails(context.Background(), "job1", "n1", "h3", MigrateOptions{})
	if err == nil || !strings.Contains(err.Error(), "keeps running on its old hosts") {
		t.Fatalf("migration whose restore failed: %v", err)
	}
	f.heal("h3", PhaseRestore)
	f.assertRunning(t)
	f.assertNoPartial(t)
	if f.agents["h1"].serving("job1/n1") {
		t.Fatal("the source still serves pages after the rollback")
	}
	if j, _ := f.c.Job("job1"); j.Spec.Nodes[1].Host != "h1" {
		t.Fatalf("n1 on %s after the rollback", j.Spec.Nodes[1].Host)
	}
}

func TestParsePostCopy(t *testing.T) {
	for in, want := range map[string]PostCopy{"": PostCopyAuto, "auto": PostCopyAuto, "always": PostCopyAlways, "never": PostCopyNever} {
		if got, err := ParsePostCopy(in); err != nil || got != want {
			t.Errorf("ParsePostCopy(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParsePostCopy("sometimes"); err == nil {
		t.Error("ParsePostCopy accepted sometimes")
	}
}
