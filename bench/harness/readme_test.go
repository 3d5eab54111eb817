package harness

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sampleResult() *Result {
	return &Result{
		Mode: "quick", Started: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
		Machine: Machine{Host: "vm", CPUs: 2, CPU: "cpu", Kernel: "6.16", CRIU: "4.2.1"},
		Migrate: []MigratePoint{{MiB: 256, Downtime: stat(540), TCP: stat(20, 30)}},
		B1: &B1Result{Cases: []B1Case{{Program: "ring", MPI: "openmpi",
			PlainStart: &B1Startup{FirstRank: stat(60)}, TorporStart: &B1Startup{FirstRank: stat(260)}}},
			Long: []B1LongCase{{Program: "ring", MPI: "openmpi", Overhead: &B1Overhead{Pct: 0.4}}}},
	}
}

// TestReadmeSection checks the table's cells and that the same results
// always give the same bytes.
func TestReadmeSection(t *testing.T) {
	got := ReadmeSection(sampleResult(), "bench/results/latest.json")
	for i := 0; i < 5; i++ {
		if again := ReadmeSection(sampleResult(), "bench/results/latest.json"); again != got {
			t.Fatalf("not deterministic:\n%s\n---\n%s", got, again)
		}
	}
	for _, want := range []string{
		"quick run of 2026-12-01 on `vm`",
		"| `migration_downtime_ms_256MiB` | migration downtime of one 256 MiB job-node (B4 median; the smaller over modes) | 540 ms | ≤ 300 ms | **not met** |",
		"| `migration_downtime_ms_1GiB` | migration downtime of one 1 GiB job-node (B4 median; the smaller over modes) | not measured | ≤ 300 ms | — |",
		"| 0.40 % | ≤ 1.00 % | met |",
		"| +200 ms | ≤ 150 ms | **not met** |",
		"| `coordination_ms_256` |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("section lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n| `"); n != 8 {
		t.Errorf("%d key rows, want 8:\n%s", n, got)
	}
	noisy := sampleResult()
	noisy.B1.Long[0].Overhead.NoisePct = 35
	if got := ReadmeSection(noisy, "x"); !strings.Contains(got, "| 0.40 % | ≤ 1.00 % | unresolved: plain mpirun's own window rates spread 35 % |") {
		t.Errorf("an overhead below the noise is not called met:\n%s", got)
	}
}

// TestRewriteReadme checks that only what lies between the markers changes,
// that a second rewrite changes nothing, and that bad markers are refused.
func TestRewriteReadme(t *testing.T) {
	before, after := "# x\n\n## Benchmarks\n\nhand-written\n", "\nmore hand-written\n## Layout\n"
	readme := before + ReadmeBegin + "\nold table\n" + ReadmeEnd + after
	for _, tc := range []struct {
		name, readme string
		err          error
	}{
		{"markers", readme, nil},
		{"empty between", before + ReadmeBegin + ReadmeEnd + after, nil},
		{"no markers", before + after, ErrMarkers},
		{"only begin", before + ReadmeBegin + after, ErrMarkers},
		{"twice", readme + readme, ErrMarkers},
		{"end first", before + ReadmeEnd + "\n" + ReadmeBegin + after, ErrMarkers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := RewriteReadme([]byte(tc.readme), "new table\n")
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			want := before + ReadmeBegin + "\nnew table\n" + ReadmeEnd + after
			if string(out) != want {
				t.Errorf("got:\n%s\nwant:\n%s", out, want)
			}
			again, err := RewriteReadme(out, "new table\n")
			if err != nil || string(again) != string(out) {
				t.Errorf("second rewrite changed it (%v):\n%s", err, again)
			}
		})
	}
}

// TestUpdateReadme runs the command's path: results JSON (written as a run
// writes it) to README, twice, the same bytes both times.
func TestUpdateReadme(t *testing.T) {
	dir := t.TempDir()
	files, err := Write(sampleResult(), filepath.Join(dir, "bench", "results"), filepath.Join(dir, "no-plotter"))
	if err != nil {
		t.Fatal(err)
	}
	latest := filepath.Join(dir, "bench", "results", "latest.json")
	if files[1] != latest {
		t.Fatalf("Write wrote %v, want latest.json second", files)
	}
	dated, _ := os.ReadFile(files[0])
	data, _ := os.ReadFile(latest)
	if string(dated) != string(data) || !strings.Contains(string(data), `"summary": {`) {
		t.Fatalf("latest.json is not the run's JSON with its summary:\n%s", data)
	}
	readme := filepath.Join(dir, "README.md")
	if err := os.WriteFile(readme, []byte("top\n"+ReadmeBegin+"\n"+ReadmeEnd+"\nbottom\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := UpdateReadme(readme, latest); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(readme)
	if err := UpdateReadme(readme, latest); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(readme)
	if string(first) != string(second) {
		t.Errorf("not deterministic:\n%s\n---\n%s", first, second)
	}
	for _, want := range []string{"from [`bench/results/latest.json`](bench/results/latest.json)", "| 540 ms |", "top\n" + ReadmeBegin, ReadmeEnd + "\nbottom\n"} {
		if !strings.Contains(string(first), want) {
			t.Errorf("README lacks %q:\n%s", want, first)
		}
	}
}
