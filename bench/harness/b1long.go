package harness

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sort"
	"time"
)

// B1LongSpec is one case of B1's long mode.
type B1LongSpec struct {
	Program string `json:"program"`
	MPI     string `json:"mpi"`
	Reps    int    `json:"reps"` // runs of each side, interleaved
}

// The long mode's windows: the rate is measured from b1Warmup after rank 0's
// MPI_Init returned to the run's end (Plan.B1LongSecs), in windows of b1Window.
const (
	b1Warmup = 10 * time.Second
	b1Window = 10 * time.Second
)

// B1LongRun is one run of the long mode.
type B1LongRun struct {
	Side        string    `json:"side"` // "plain" or "torpor"
	FirstRankMs float64   `json:"first_rank_ms"`
	InitMs      float64   `json:"mpi_init_returned_ms"`
	TeardownMs  float64   `json:"teardown_ms"`
	WallMs      float64   `json:"wall_ms"`
	Iters       uint64    `json:"iters"`
	Checksum    string    `json:"checksum"`
	Rate        float64   `json:"steady_rate_per_s"`  // iterations per second over all the windows
	Windows     []float64 `json:"window_rates_per_s"` // iterations per second in each window
	Hung        bool      `json:"hung_at_finalize,omitempty"`
	Err         string    `json:"error,omitempty"`
	// CPU is where the machine's CPU time went from the warm-up's end to
	// 1 s before the run's; RatePerCPU is Rate per CPU-second the ranks got.
	CPU        *B1CPU  `json:"cpu,omitempty"`
	CPUErr     string  `json:"cpu_error,omitempty"`
	RatePerCPU float64 `json:"rate_per_rank_cpu_s,omitempty"`
}

// B1LongCase is one program on one MPI library in long mode: runs of
// Secs seconds (-T), plain mpirun and torpor run interleaved.
type B1LongCase struct {
	Program  string      `json:"program"`
	MPI      string      `json:"mpi"`
	Ranks    int         `json:"ranks"`
	Args     []string    `json:"args"`
	Secs     int         `json:"secs"`
	WarmupS  float64     `json:"warmup_s"`
	WindowS  float64     `json:"window_s"`
	Runs     []B1LongRun `json:"runs"` // in the order they ran
	Overhead *B1Overhead `json:"steady,omitempty"`
	Err      string      `json:"error,omitempty"`
}

// B1Overhead is the long mode's verdict on one case.
type B1Overhead struct {
	PlainRate  float64 `json:"plain_rate_per_s"`  // median of the plain runs' steady rates
	TorporRate float64 `json:"torpor_rate_per_s"` // median of the torpor runs' steady rates
	Pct        float64 `json:"overhead_pct"`      // 100 (plain − torpor) / plain
	// WindowMinPct and WindowMaxPct bound the same overhead computed window by
	// window (window k's median rate of each side); NoisePct is the plain
	// side's own spread, (max − min) / median of all its window rates: an
	// overhead smaller than that is not resolved.
	WindowMinPct float64 `json:"window_min_pct"`
	WindowMaxPct float64 `json:"window_max_pct"`
	NoisePct     float64 `json:"plain_noise_pct"`
	PlainRuns    int     `json:"plain_runs"`
	TorporRuns   int     `json:"torpor_runs"`
	// The overhead split in two, from the runs that read their CPU time
	// (B1CPU): CPUPct is the share of the machine's CPU time the ranks did
	// not get under torpor that they got under plain mpirun, 100 (plain −
	// torpor) / plain of the medians of RanksPct; PerCPUPct is the same
	// comparison of iterations per CPU-second the ranks got, what is left
	// when that is taken out (the machine's own noise among it).
	PlainRanksCPUPct  float64 `json:"plain_ranks_cpu_pct,omitempty"`
	TorporRanksCPUPct float64 `json:"torpor_ranks_cpu_pct,omitempty"`
	CPUPct            float64 `json:"cpu_pct,omitempty"`
	PlainPerCPU       float64 `json:"plain_rate_per_rank_cpu_s,omitempty"`
	TorporPerCPU      float64 `json:"torpor_rate_per_rank_cpu_s,omitempty"`
	PerCPUPct         float64 `json:"per_cpu_pct,omitempty"`
}

// b1LongArgs are the program's arguments: -p so that a stamp comes every
// few hundred ms on this machine, -t, -T secs.
func b1LongArgs(program, mpi string, secs int) []string {
	every := "1000" // Open MPI ring: ~0.1–0.5 ms an iteration on 2 cores
	switch {
	case program == "stencil":
		every = "100"
	case mpi == "mpich" || mpi == "mpich42":
		every = "25" // MPICH 4.0.2 busy-polls 4 ranks on 2 cores: ~10 ms an iteration
	}
	args := []string{"-i", "1000000000", "-p", every, "-t", "-T", fmt.Sprint(secs)}
	if program == "ring" {
		return append([]string{"-m", "16"}, args...)
	}
	return append([]string{"-n", "512"}, args...)
}

// runB1Long runs spec.Reps runs of each side, interleaved (plain, torpor,
// torpor, plain, ...). A run that hangs at finalize keeps its measurements
// and is marked; one that fails otherwise is reported in its row.
func runB1Long(ctx context.Context, b b1Setup, spec B1LongSpec, secs int, logf func(string, ...any)) B1LongCase {
	// One rank per core: with more ranks than cores, busy-polling ranks are
	// scheduled against each other and the rate's own noise (hundreds of
	// per cent between 10 s windows with 4 ranks on 2 cores) swamps a 1 %
	// difference.
	ranks := max(runtime.NumCPU(), 2)
	c := B1LongCase{Program: spec.Program, MPI: spec.MPI, Ranks: ranks, Args: b1LongArgs(spec.Program, spec.MPI, secs),
		Secs: secs, WarmupS: b1Warmup.Seconds(), WindowS: b1Window.Seconds()}
	plainL, torL, err := b.launchers(spec.Program, spec.MPI, ranks, c.Args)
	if err != nil {
		c.Err = err.Error()
		return c
	}
	phase := &cpuPhase{from: b1Warmup, to: time.Duration(secs)*time.Second - time.Second, rank: spec.Program + "." + spec.MPI}
	plainL.cpu, torL.cpu = phase, phase
	sums := map[uint64]string{}
	timeout := time.Duration(secs)*time.Second + 3*time.Minute
	for r := 0; r < spec.Reps; r++ {
		for _, underTorpor := range sideOrder(r) {
			if underTorpor && !b.ok {
				continue
			}
			l, side := plainL, "plain"
			if underTorpor {
				l, side = torL, "torpor"
			}
			run, err := mpiRun(ctx, l, timeout)
			lr := longRun(side, run, secs)
			if err != nil {
				lr.Err = firstLine(err.Error())
			}
			for it, sum := range run.Sums {
				if want, ok := sums[it]; ok && want != sum {
					lr.Err = fmt.Sprintf("checksum at iteration %d is %s, another run had %s", it, sum, want)
				}
				sums[it] = sum
			}
			logf("B1 long %s/%s %s: start-up %.0f ms (first rank), %.0f ms (MPI_Init), %.0f it/s steady, %d iterations, teardown %.0f ms %s",
				spec.Program, spec.MPI, side, lr.FirstRankMs, lr.InitMs, lr.Rate, lr.Iters, lr.TeardownMs, lr.Err)
			c.Runs = append(c.Runs, lr)
		}
	}
	c.Overhead = c.overhead()
	if c.Overhead != nil {
		logf("B1 long %s/%s: steady-state overhead %.2f%% (windows %.2f…%.2f%%, plain noise %.2f%%)", spec.Program, spec.MPI,
			c.Overhead.Pct, c.Overhead.WindowMinPct, c.Overhead.WindowMaxPct, c.Overhead.NoisePct)
	}
	return c
}

// longRun turns a run into its row: start-up and the rates in the windows
// [warm-up + k·window, warm-up + (k+1)·window) after MPI_Init returned, up
// to secs.
func longRun(side string, r b1Run, secs int) B1LongRun {
	lr := B1LongRun{Side: side, FirstRankMs: Ms(r.FirstRank), InitMs: Ms(r.Init), TeardownMs: Ms(r.Teardown),
		WallMs: Ms(r.Wall), Iters: r.Iters, Checksum: r.Checksum, Hung: r.Hung, CPU: r.CPU, CPUErr: r.CPUErr}
	end := r.Init + time.Duration(secs)*time.Second
	from := r.Init + b1Warmup
	if len(r.Progress) == 0 || r.Progress[len(r.Progress)-1].At < end || end <= from {
		return lr // too short to say: no rate
	}
	// Iterations done by a time since the launch: linear between stamps,
	// starting from none when MPI_Init returned.
	pts := append([]progressPoint{{0, r.Init}}, r.Progress...)
	done := func(t time.Duration) float64 {
		i := sort.Search(len(pts), func(i int) bool { return pts[i].At >= t })
		if i == 0 {
			return float64(pts[0].Iter)
		}
		a, b := pts[i-1], pts[i]
		return float64(a.Iter) + float64(b.Iter-a.Iter)*float64(t-a.At)/float64(b.At-a.At)
	}
	for t := from; t+b1Window <= end; t += b1Window {
		lr.Windows = append(lr.Windows, (done(t+b1Window)-done(t))/b1Window.Seconds())
	}
	lr.Rate = (done(end) - done(from)) / (end - from).Seconds()
	if lr.CPU != nil && lr.CPU.RanksPct > 0 {
		lr.RatePerCPU = lr.Rate / (lr.CPU.RanksPct / 100 * float64(lr.CPU.CPUs))
	}
	return lr
}

// overhead compares the sides' steady rates, or is nil when a side has no
// measured run.
func (c B1LongCase) overhead() *B1Overhead {
	var plain, tor []float64
	var plainWin, torWin [][]float64
	var allPlain []float64
	var share, per [2][]float64 // [plain, torpor], of the runs that read their CPU time
	for _, r := range c.Runs {
		if r.Rate <= 0 || (r.Err != "" && !r.Hung) {
			continue
		}
		side := 0
		if r.Side == "plain" {
			plain, plainWin = append(plain, r.Rate), append(plainWin, r.Windows)
			allPlain = append(allPlain, r.Windows...)
		} else {
			tor, torWin = append(tor, r.Rate), append(torWin, r.Windows)
			side = 1
		}
		if r.RatePerCPU > 0 { // set only with r.CPU
			share[side], per[side] = append(share[side], r.CPU.RanksPct), append(per[side], r.RatePerCPU)
		}
	}
	if len(plain) == 0 || len(tor) == 0 {
		return nil
	}
	o := &B1Overhead{PlainRate: NewStat(plain).Median, TorporRate: NewStat(tor).Median, PlainRuns: len(plain), TorporRuns: len(tor)}
	o.Pct = 100 * (o.PlainRate - o.TorporRate) / o.PlainRate
	o.WindowMinPct, o.WindowMaxPct = math.Inf(1), math.Inf(-1)
	for k := 0; ; k++ {
		p, okP := column(plainWin, k)
		t, okT := column(torWin, k)
		if !okP || !okT {
			break
		}
		pct := 100 * (p - t) / p
		o.WindowMinPct, o.WindowMaxPct = min(o.WindowMinPct, pct), max(o.WindowMaxPct, pct)
	}
	if math.IsInf(o.WindowMinPct, 0) {
		o.WindowMinPct, o.WindowMaxPct = o.Pct, o.Pct
	}
	if len(allPlain) > 0 {
		o.NoisePct = 100 * NewStat(allPlain).Spread()
	}
	if len(share[0]) > 0 && len(share[1]) > 0 {
		o.PlainRanksCPUPct, o.TorporRanksCPUPct = NewStat(share[0]).Median, NewStat(share[1]).Median
		o.CPUPct = 100 * (o.PlainRanksCPUPct - o.TorporRanksCPUPct) / o.PlainRanksCPUPct
		o.PlainPerCPU, o.TorporPerCPU = NewStat(per[0]).Median, NewStat(per[1]).Median
		o.PerCPUPct = 100 * (o.PlainPerCPU - o.TorporPerCPU) / o.PlainPerCPU
	}
	return o
}

// column is the median of window k over runs, if every run has it.
func column(runs [][]float64, k int) (float64, bool) {
	var v []float64
	for _, w := range runs {
		if k >= len(w) {
			return 0, false
		}
		v = append(v, w[k])
	}
	return NewStat(v).Median, len(v) > 0
}
