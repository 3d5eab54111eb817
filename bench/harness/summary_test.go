package harness

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

func stat(ms ...float64) Stat { return NewStat(ms) }

func fp(v float64) *float64 { return &v }

// TestSummarize checks every key against synthetic results: what counts,
// what is left out, and null for what a run did not measure.
func TestSummarize(t *testing.T) {
	b1 := &B1Result{
		Cases: []B1Case{
			{Program: "ring", MPI: "openmpi", PlainStart: &B1Startup{FirstRank: stat(50, 60, 70)}, TorporStart: &B1Startup{FirstRank: stat(200, 210, 220)}},
			// Another program does not count.
			{Program: "stencil", MPI: "openmpi", PlainStart: &B1Startup{FirstRank: stat(1)}, TorporStart: &B1Startup{FirstRank: stat(1000)}},
			// MPICH's difference is smaller here (120): Open MPI's (150) is the larger.
			{Program: "ring", MPI: "mpich", PlainStart: &B1Startup{FirstRank: stat(10, 20)}, TorporStart: &B1Startup{FirstRank: stat(135)}},
		},
		Long: []B1LongCase{
			{Program: "ring", MPI: "openmpi", Overhead: &B1Overhead{Pct: 0.5},
				Runs: []B1LongRun{{Side: "plain", FirstRankMs: 80}, {Side: "torpor", FirstRankMs: 230},
					{Side: "torpor", FirstRankMs: 9999, Err: "failed"}}},
			{Program: "ring", MPI: "mpich", Overhead: &B1Overhead{Pct: 30}},
		},
	}
	full := &Result{
		Ckpt: []CkptPoint{
			{MiB: 16, Nodes: 1, TorporWall: stat(60), RawSeqWall: stat(40), RestartWall: stat(100), RawRestoreWall: stat(50),
				RestartTCP: stat(0, 0)}, // one job-node: no TCP peer, left out
			{MiB: 64, Nodes: 2, TorporWall: stat(300), RawSeqWall: stat(100), RestartWall: stat(200), RawRestoreWall: stat(200),
				RestartTCP: stat(10, 20)},
			{MiB: 64, Nodes: 4, Err: "boom", TorporWall: stat(9000), RawSeqWall: stat(1), RestartTCP: stat(5000)},
		},
		Migrate: []MigratePoint{
			{MiB: 256, Downtime: stat(500, 540, 600), TCP: stat(30, 40)},
			{MiB: 256, Downtime: stat(300, 320, 310), TCP: stat(50)}, // a second mode: the smaller median
			{MiB: 1024, Downtime: stat(1500), TCP: stat(100)},
			{MiB: 1024, Err: "x", Downtime: stat(1), TCP: stat(9000)},
		},
		Coord: []CoordPoint{
			{Nodes: 256, Fake: false, Overhead: stat(9999)},
			{Nodes: 64, Fake: true, Overhead: stat(80)},
			{Nodes: 256, Fake: true, Overhead: stat(310, 314, 330)},
		},
		B1: b1,
	}
	// unlock→TCP samples: 10 20 30 40 50 100 → p95 at position 4.75: 50 + 0.75·50.
	wantFull := Summary{
		UnlockToTCPP95Ms:          fp(87.5),
		CheckpointOverRawMax:      fp(3),
		RestartOverRawMax:         fp(2),
		MigrationDowntimeMs256MiB: fp(310),
		MigrationDowntimeMs1GiB:   fp(1500),
		SteadyOverheadPct:         fp(0.5),
		StartupMsOverMpirun:       fp(215 - 65), // torpor 200 210 220 230, plain 50 60 70 80
		CoordinationMs256:         fp(314),
	}
	for _, tc := range []struct {
		name string
		r    *Result
		want Summary
	}{
		{"everything", full, wantFull},
		{"nothing measured", &Result{}, Summary{}},
		{"only failed points", &Result{Ckpt: []CkptPoint{{Nodes: 2, Err: "x", TorporWall: stat(1), RawSeqWall: stat(1), RestartTCP: stat(3)}},
			Migrate: []MigratePoint{{MiB: 256, Err: "x", Downtime: stat(1)}}}, Summary{}},
		{"start-up: the larger over MPI libraries", &Result{B1: &B1Result{Cases: []B1Case{
			{Program: "ring", MPI: "openmpi", PlainStart: &B1Startup{FirstRank: stat(100)}, TorporStart: &B1Startup{FirstRank: stat(150)}},
			{Program: "ring", MPI: "mpich", PlainStart: &B1Startup{FirstRank: stat(20)}, TorporStart: &B1Startup{FirstRank: stat(200)}}}}},
			Summary{StartupMsOverMpirun: fp(180)}},
		{"coordination: the fresh ext4 point when the run has one", &Result{Coord: []CoordPoint{
			{Nodes: 256, Fake: true, Overhead: stat(140)},
			{Nodes: 256, Fake: true, FreshExt4: true, Overhead: stat(50, 60)},
			{Nodes: 256, Fake: true, Tmpfs: true, Overhead: stat(30)}}},
			Summary{CoordinationMs256: fp(55)}},
		{"coordination: a failed fresh ext4 point is not replaced by another", &Result{Coord: []CoordPoint{
			{Nodes: 256, Fake: true, Overhead: stat(140)},
			{Nodes: 256, Fake: true, FreshExt4: true, Err: "mkfs.ext4: not found"},
			{Nodes: 256, Fake: true, Tmpfs: true, Overhead: stat(30)}}},
			Summary{}},
		{"B1 without its torpor side", &Result{B1: &B1Result{Cases: []B1Case{{Program: "ring", MPI: "openmpi", PlainStart: &B1Startup{FirstRank: stat(50)}}}}}, Summary{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Summarize(tc.r)
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(tc.want)
			if string(g) != string(w) {
				t.Errorf("Summarize:\n got %s\nwant %s", g, w)
			}
		})
	}
}

// TestSummaryKeys pins the JSON keys: exactly these, null when not measured.
func TestSummaryKeys(t *testing.T) {
	data, err := json.Marshal(Summary{})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"unlock_to_tcp_p95_ms":null,"checkpoint_over_raw_max":null,"restart_over_raw_max":null,` +
		`"migration_downtime_ms_256MiB":null,"migration_downtime_ms_1GiB":null,"steady_overhead_pct":null,` +
		`"startup_ms_over_mpirun":null,"coordination_ms_256":null}`
	if string(data) != want {
		t.Errorf("got %s\nwant %s", data, want)
	}
	if len(summaryRows) != 8 {
		t.Errorf("%d rows in the README table, want one per key (8)", len(summaryRows))
	}
}

// TestLongRunWindows checks the long mode's rates on synthetic stamps.
func TestLongRunWindows(t *testing.T) {
	s := time.Second
	// 100 it/s for the first 30 s after MPI_Init (at 1 s), then 50 it/s.
	var prog []progressPoint
	for at := 2 * s; at <= 62*s; at += s {
		since := at - s
		var it float64
		if since <= 30*s {
			it = 100 * since.Seconds()
		} else {
			it = 3000 + 50*(since-30*s).Seconds()
		}
		prog = append(prog, progressPoint{uint64(it), at})
	}
	for _, tc := range []struct {
		name    string
		run     b1Run
		secs    int
		rate    float64
		windows []float64
	}{
		{"two rates", b1Run{Init: s, Progress: prog}, 60, (2000 + 1500) / 50.0, []float64{100, 100, 50, 50, 50}},
		{"shorter than asked", b1Run{Init: s, Progress: prog[:30]}, 60, 0, nil},
		{"no stamps", b1Run{Init: s}, 60, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lr := longRun("plain", tc.run, tc.secs)
			if math.Abs(lr.Rate-tc.rate) > 1e-9 {
				t.Errorf("rate %v, want %v", lr.Rate, tc.rate)
			}
			if len(lr.Windows) != len(tc.windows) {
				t.Fatalf("windows %v, want %v", lr.Windows, tc.windows)
			}
			for i := range lr.Windows {
				if math.Abs(lr.Windows[i]-tc.windows[i]) > 1e-9 {
					t.Errorf("windows %v, want %v", lr.Windows, tc.windows)
				}
			}
		})
	}
}

// TestOverhead checks the steady-state verdict and that a side without a
// complete run gives none.
func TestOverhead(t *testing.T) {
	run := func(side string, rate float64, windows ...float64) B1LongRun {
		return B1LongRun{Side: side, Rate: rate, Windows: windows}
	}
	c := B1LongCase{Runs: []B1LongRun{
		run("plain", 1000, 990, 1010), run("torpor", 990, 985, 995), run("torpor", 980, 970, 990), run("plain", 1010, 1000, 1020),
		{Side: "torpor", Rate: 1, Err: "failed"}, // left out
	}}
	o := c.overhead()
	if o == nil {
		t.Fatal("no overhead")
	}
	// plain median 1005, torpor median 985.
	if want := 100 * 20.0 / 1005; math.Abs(o.Pct-want) > 1e-9 {
		t.Errorf("overhead %v%%, want %v%%", o.Pct, want)
	}
	// window 0: plain 995, torpor 977.5; window 1: plain 1015, torpor 992.5.
	if lo, hi := 100*17.5/995, 100*22.5/1015; math.Abs(o.WindowMinPct-min(lo, hi)) > 1e-9 || math.Abs(o.WindowMaxPct-max(lo, hi)) > 1e-9 {
		t.Errorf("window range %v…%v, want %v…%v", o.WindowMinPct, o.WindowMaxPct, min(lo, hi), max(lo, hi))
	}
	if want := 100 * 30.0 / 1005; math.Abs(o.NoisePct-want) > 1e-9 {
		t.Errorf("noise %v%%, want %v%%", o.NoisePct, want)
	}
	if o.PlainRuns != 2 || o.TorporRuns != 2 {
		t.Errorf("runs %d/%d, want 2/2", o.PlainRuns, o.TorporRuns)
	}
	hung := B1LongCase{Runs: []B1LongRun{run("plain", 100, 100), {Side: "torpor", Rate: 99, Windows: []float64{99}, Err: "hang", Hung: true}}}
	if o := hung.overhead(); o == nil || math.Abs(o.Pct-1) > 1e-9 {
		t.Errorf("a run that hung at finalize keeps its rate: got %+v", o)
	}
	if o := (B1LongCase{Runs: []B1LongRun{run("plain", 100, 100)}}).overhead(); o != nil {
		t.Errorf("no torpor run, yet overhead %+v", o)
	}
}

// TestOverheadCPU checks the overhead's split: the ranks' CPU share and
// their rate per CPU-second, from the runs that read their CPU time.
func TestOverheadCPU(t *testing.T) {
	run := func(side string, rate, ranksPct float64) B1LongRun {
		r := longRun(side, b1Run{}, 60) // no stamps: no rate
		r.Rate, r.Windows, r.CPU = rate, []float64{rate}, &B1CPU{CPUs: 2, RanksPct: ranksPct}
		r.RatePerCPU = rate / (ranksPct / 100 * 2)
		return r
	}
	noCPU := B1LongRun{Side: "torpor", Rate: 1, Windows: []float64{1}} // counted in the rates, not in the split
	c := B1LongCase{Runs: []B1LongRun{run("plain", 1000, 99), run("torpor", 960, 98), run("torpor", 940, 97), run("plain", 1020, 99), noCPU}}
	o := c.overhead()
	if o == nil {
		t.Fatal("no overhead")
	}
	if o.PlainRanksCPUPct != 99 || o.TorporRanksCPUPct != 97.5 {
		t.Errorf("ranks' CPU %v / %v %%, want 99 / 97.5", o.PlainRanksCPUPct, o.TorporRanksCPUPct)
	}
	if want := 100 * 1.5 / 99; math.Abs(o.CPUPct-want) > 1e-9 {
		t.Errorf("CPU lost %v%%, want %v%%", o.CPUPct, want)
	}
	// per rank-CPU-second: plain 1000/1.98 and 1020/1.98, torpor 960/1.96 and 940/1.94.
	plain, tor := (1000/1.98+1020/1.98)/2, (960/1.96+940/1.94)/2
	if math.Abs(o.PlainPerCPU-plain) > 1e-9 || math.Abs(o.TorporPerCPU-tor) > 1e-9 || math.Abs(o.PerCPUPct-100*(plain-tor)/plain) > 1e-9 {
		t.Errorf("per rank-CPU-second %v / %v (%v%%), want %v / %v", o.PlainPerCPU, o.TorporPerCPU, o.PerCPUPct, plain, tor)
	}
	if o := (B1LongCase{Runs: []B1LongRun{run("plain", 1000, 99), noCPU}}).overhead(); o == nil || o.CPUPct != 0 || o.TorporRanksCPUPct != 0 {
		t.Errorf("no torpor run read its CPU, yet a split: %+v", o)
	}
}

// TestLongRunCPU checks that a run's rate per rank-CPU-second comes from
// its rate and its ranks' share of all CPUs.
func TestLongRunCPU(t *testing.T) {
	s := time.Second
	var prog []progressPoint
	for at := 2 * s; at <= 62*s; at += s {
		prog = append(prog, progressPoint{uint64(100 * (at - s).Seconds()), at})
	}
	lr := longRun("torpor", b1Run{Init: s, Progress: prog, CPU: &B1CPU{CPUs: 2, RanksPct: 80}}, 60)
	if want := 100 / 1.6; math.Abs(lr.RatePerCPU-want) > 1e-9 {
		t.Errorf("rate per rank-CPU-second %v, want %v", lr.RatePerCPU, want)
	}
	if lr := longRun("torpor", b1Run{Init: s, Progress: prog}, 60); lr.RatePerCPU != 0 || lr.CPU != nil {
		t.Errorf("no CPU read, yet %+v", lr)
	}
}
