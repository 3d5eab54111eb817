package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/shim/criu"
)

// Config chooses what to run.
type Config struct {
	Full    bool   // the long run: more sizes, job-nodes and repetitions
	Out     string // where results go (bench/results)
	Repo    string // repository root (for bench/workloads/bin and bin/torpor)
	WorkDir string // scratch: images and status files (removed afterwards)
	Only    string // comma-separated subset of b1,b2,b4,b5,b6,b7,b8,b9 ("" = all; b2 includes B3)
	Plotter string // the torpor-plot binary (bench/plot) that draws the PNGs
	Log     *slog.Logger
	// Progress receives one line per measurement.
	Progress func(format string, args ...any)
}

// Plan is the sizes and counts of one run.
type Plan struct {
	Reps        int   `json:"reps"`         // checkpoints per point (B2, B5)
	RestartReps int   `json:"restart_reps"` // suspend+restart cycles per point (B3)
	MigrateReps int   `json:"migrate_reps"` // migrations per size and mode (B4)
	MigrateMiB  []int `json:"b4_mib"`       // B4 sizes of the moved job-node
	// MigrateBigReps replaces MigrateReps from 1 GiB up.
	MigrateBigReps int `json:"b4_big_reps"`
	B1Reps         int `json:"b1_reps"`
	// B1Long are the long mode's cases, each of B1LongSecs-second runs.
	B1Long      []B1LongSpec `json:"b1_long,omitempty"`
	B1LongSecs  int          `json:"b1_long_s,omitempty"`
	MemMiB      []int        `json:"mem_mib"`     // B2/B3 memory sweep (1 job-node)
	Nodes       []int        `json:"nodes"`       // B2/B3 job-node sweep
	NodesMiB    int          `json:"nodes_mib"`   // memory per job-node in the job-node sweep
	Matrix      bool         `json:"matrix"`      // every size with every job-node count
	RealNodes   []int        `json:"real_nodes"`  // B5 real sandboxes
	FakeNodes   []int        `json:"fake_nodes"`  // B5 fake CRIU
	CoordHosts  int          `json:"coord_hosts"` // hosts the B5 job-nodes spread over
	AppLogMiB   int          `json:"b6_log_mib"`  // B6: the log's size at the start
	AppGrowMiB  int          `json:"b6_grow_mib"` // B6: appended before every checkpoint
	AppReps     int          `json:"b6_reps"`     // B6: steady checkpoints per variant
	CompressMiB []int        `json:"b7_mib"`      // B7: memory sizes, every codec
	StreamMiB   []int        `json:"b8_mib"`      // B8: sizes of the moved job-node
	StreamReps  int          `json:"b8_reps"`     // B8: migrations per size and mode
	SpareHost   int          `json:"-"`
}

// QuickPlan fits in under ten minutes on a 2-core machine.
func QuickPlan() Plan {
	return Plan{Reps: 3, RestartReps: 4, MigrateReps: 3, B1Reps: 5,
		B1Long: []B1LongSpec{{"ring", "openmpi", 2}, {"ring", "mpich42", 1}}, B1LongSecs: 60,
		MigrateMiB: []int{16, 64, 256, 1024}, MigrateBigReps: 2,
		MemMiB: []int{16, 64, 256}, Nodes: []int{1, 2, 4}, NodesMiB: 64,
		RealNodes: []int{1, 4, 16}, FakeNodes: []int{1, 4, 16, 64, 256}, CoordHosts: 4,
		AppLogMiB: 256, AppGrowMiB: 10, AppReps: 5, CompressMiB: []int{64, 256}, StreamMiB: []int{64, 256}, StreamReps: 7}
}

// FullPlan is the complete run (tens of minutes).
func FullPlan() Plan {
	return Plan{Reps: 5, RestartReps: 5, MigrateReps: 5, B1Reps: 7,
		B1Long:     []B1LongSpec{{"ring", "openmpi", 3}, {"stencil", "openmpi", 2}, {"ring", "mpich42", 2}},
		B1LongSecs: 60,
		MigrateMiB: []int{16, 64, 256, 1024}, MigrateBigReps: 5,
		MemMiB: []int{16, 64, 256, 1024}, Nodes: []int{1, 2, 4}, NodesMiB: 256, Matrix: true,
		RealNodes: []int{1, 4, 16, 32, 64}, FakeNodes: []int{1, 4, 16, 64, 128, 256}, CoordHosts: 4,
		AppLogMiB: 1024, AppGrowMiB: 10, AppReps: 20, CompressMiB: []int{64, 256, 1024}, StreamMiB: []int{64, 256, 1024}, StreamReps: 9}
}

// Result is everything one run measured.
type Result struct {
	Mode     string    `json:"mode"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Summary is computed from the rest when the results are written.
	Summary  *Summary        `json:"summary,omitempty"`
	Machine  Machine         `json:"machine"`
	Plan     Plan            `json:"plan"`
	B1       *B1Result       `json:"b1,omitempty"`
	Ckpt     []CkptPoint     `json:"b2_b3,omitempty"`
	Migrate  []MigratePoint  `json:"b4,omitempty"`
	Coord    []CoordPoint    `json:"b5,omitempty"`
	AppFiles *AppFilesResult `json:"b6,omitempty"`
	Compress []CompressPoint `json:"b7,omitempty"`
	// Streamed is B8: migrations on a routed cluster (VXLAN), images
	// through the checkpoint directory and streamed from shim to shim.
	Streamed []MigratePoint `json:"b8,omitempty"`
	// Replication is B9: a busy job's progress while a host-local
	// checkpoint is copied to its replicas.
	Replication []ReplicationPoint `json:"b9,omitempty"`
	Errors      []string           `json:"errors,omitempty"`
}

func (c Config) wants(b string) bool {
	if c.Only == "" {
		return true
	}
	for _, x := range strings.Split(c.Only, ",") {
		if strings.TrimSpace(x) == b {
			return true
		}
	}
	return false
}

// Run runs the benchmarks, writes the results and returns them. A failing
// benchmark is recorded in Result.Errors and the others still run.
func Run(ctx context.Context, cfg Config) (*Result, []string, error) {
	if os.Geteuid() != 0 {
		return nil, nil, fmt.Errorf("the benchmarks create namespaces, cgroups and run CRIU: run as root")
	}
	logf := cfg.Progress
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	plan, mode := QuickPlan(), "quick"
	if cfg.Full {
		plan, mode = FullPlan(), "full"
	}
	plan.SpareHost = max(maxOf(plan.Nodes), 2) + 1
	res := &Result{Mode: mode, Started: time.Now(), Plan: plan}
	bin, err := criu.Locator{}.Find()
	if err != nil {
		return nil, nil, fmt.Errorf("find criu (run `make deps`): %w", err)
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return nil, nil, err
	}
	work, err := os.MkdirTemp(cfg.WorkDir, "torpor-bench-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(work)
	res.Machine = Facts(ctx, work, bin)
	bins, err := BuildBins(ctx, work)
	if err != nil {
		return nil, nil, err
	}
	fail := func(what string, err error) {
		res.Errors = append(res.Errors, what+": "+err.Error())
		logf("%s failed: %v", what, err)
	}
	name := fmt.Sprintf("b%d", os.Getpid()%100000)

	if cfg.wants("b1") {
		b1 := runB1(ctx, cfg.Repo, filepath.Join(work, "b1"), plan, cfg.Full, logf)
		res.B1 = &b1
	}
	if cfg.wants("b2") || cfg.wants("b4") {
		err := withEnv(ctx, EnvConfig{Name: name, Hosts: plan.SpareHost, Dir: filepath.Join(work, "env"), Bins: bins, CRIU: bin, Log: cfg.Log}, func(e *Env) {
			if cfg.wants("b2") {
				for _, pt := range ckptPoints(plan) {
					p := runCkptPoint(ctx, e, pt[0], pt[1], plan.Reps, plan.RestartReps, logf)
					if p.Err != "" {
						logf("B2/B3 %d MiB x %d failed: %s", pt[0], pt[1], p.Err)
					}
					res.Ckpt = append(res.Ckpt, p)
				}
			}
			if cfg.wants("b4") {
				for _, mib := range plan.MigrateMiB {
					reps := plan.MigrateReps
					if mib >= 1024 {
						reps = plan.MigrateBigReps
					}
					for _, p := range runMigratePoints(ctx, e, mib, reps, fmt.Sprintf("h%d", plan.SpareHost), logf) {
						if p.Err != "" {
							logf("B4 %d MiB %s failed: %s", mib, p.Mode, p.Err)
						}
						res.Migrate = append(res.Migrate, p)
					}
				}
			}
		})
		if err != nil {
			fail("B2-B4 cluster", err)
		}
	}
	if cfg.wants("b5") {
		err := withEnv(ctx, EnvConfig{Name: name + "c", Hosts: plan.CoordHosts, Dir: filepath.Join(work, "env5"), Bins: bins, CRIU: bin, Log: cfg.Log}, func(e *Env) {
			for _, n := range plan.RealNodes {
				res.Coord = append(res.Coord, runCoordReal(ctx, e, n, plan.CoordHosts, plan.Reps, logf))
			}
		})
		if err != nil {
			fail("B5 cluster", err)
		}
		for _, n := range plan.FakeNodes {
			p := runCoordFake(ctx, filepath.Join(work, "fake"), n, 16, max(plan.Reps, 5))
			logf("B5 fake %d job-nodes: checkpoint median %.1f ms %s", n, p.Wall.Median, p.Err)
			res.Coord = append(res.Coord, p)
		}
		// The largest again with the catalog on an ext4 made for it, with
		// a journal (runCoordFakeExt4 says why), then on a tmpfs: what is
		// left there is the coordinator's own work, without the disk.
		if n := slices.Max(plan.FakeNodes); n > 0 {
			p := runCoordFakeExt4(ctx, work, n, 16, max(plan.Reps, 5))
			logf("B5 fake %d job-nodes, catalog on a fresh ext4: checkpoint median %.1f ms %s", n, p.Wall.Median, p.Err)
			res.Coord = append(res.Coord, p)
			p = runCoordFakeTmpfs(ctx, n, 16, max(plan.Reps, 5))
			logf("B5 fake %d job-nodes, catalog on tmpfs: checkpoint median %.1f ms %s", n, p.Wall.Median, p.Err)
			res.Coord = append(res.Coord, p)
		}
	}
	if cfg.wants("b6") {
		err := withEnv(ctx, EnvConfig{Name: name + "f", Hosts: 2, Dir: filepath.Join(work, "env6"), Bins: bins, CRIU: bin, Log: cfg.Log,
			NoAppFiles: []string{b6Plain}}, func(e *Env) {
			p := runAppFiles(ctx, e, plan.AppLogMiB, plan.AppGrowMiB, plan.AppReps, logf)
			if p.Err != "" {
				logf("B6 failed: %s", p.Err)
			} else {
				logf("B6: steady checkpoint median %.1f ms with capture, %.1f ms without", p.With.Wall.Median, p.Without.Wall.Median)
			}
			res.AppFiles = &p
		})
		if err != nil {
			fail("B6 cluster", err)
		}
	}
	if cfg.wants("b7") {
		err := withEnv(ctx, EnvConfig{Name: name + "z", Hosts: 1, Dir: filepath.Join(work, "env7"), Bins: bins, CRIU: bin, Log: cfg.Log}, func(e *Env) {
			for _, mib := range plan.CompressMiB {
				res.Compress = append(res.Compress, runCompress(ctx, e, mib, plan.Reps, plan.RestartReps, logf)...)
			}
		})
		if err != nil {
			fail("B7 cluster", err)
		}
	}
	if cfg.wants("b8") {
		err := withEnv(ctx, EnvConfig{Name: name + "r", Hosts: 3, Dir: filepath.Join(work, "env8"), Bins: bins, CRIU: bin, Log: cfg.Log, Routed: true}, func(e *Env) {
			for _, mib := range plan.StreamMiB {
				res.Streamed = append(res.Streamed, runStreamPoints(ctx, e, mib, plan.StreamReps, "h3", logf)...)
			}
		})
		if err != nil {
			fail("B8 cluster", err)
		}
	}
	if cfg.wants("b9") {
		err := withEnv(ctx, EnvConfig{Name: name + "p", Hosts: 3, Dir: filepath.Join(work, "env9"), Bins: bins, CRIU: bin, Log: cfg.Log,
			Routed: true, LocalCheckpoints: true, ReplicaRate: b9Rate}, func(e *Env) {
			e.Streamed.Store(true)
			for _, mib := range plan.StreamMiB {
				res.Replication = append(res.Replication, runReplication(ctx, e, mib, b9Rate, logf))
			}
		})
		if err != nil {
			fail("B9 cluster", err)
		}
	}
	for _, p := range res.Replication {
		if p.Err != "" {
			res.Errors = append(res.Errors, fmt.Sprintf("B9 %d MiB: %s", p.MiB, p.Err))
		}
	}
	for _, p := range res.Streamed {
		if p.Err != "" {
			res.Errors = append(res.Errors, fmt.Sprintf("B8 %d MiB %s: %s", p.MiB, p.Mode, p.Err))
		}
	}
	for _, p := range res.Compress {
		if p.Err != "" {
			res.Errors = append(res.Errors, fmt.Sprintf("B7 %s %d MiB: %s", p.Codec, p.MiB, p.Err))
		}
	}
	for _, p := range res.Ckpt {
		if p.Err != "" {
			res.Errors = append(res.Errors, fmt.Sprintf("B2/B3 %d MiB x %d job-nodes: %s", p.MiB, p.Nodes, p.Err))
		}
	}
	for _, p := range res.Migrate {
		if p.Err != "" {
			res.Errors = append(res.Errors, fmt.Sprintf("B4 %d MiB %s: %s", p.MiB, p.Mode, p.Err))
		}
	}
	for _, p := range res.Coord {
		if p.Err != "" {
			res.Errors = append(res.Errors, fmt.Sprintf("B5 %d job-nodes (fake=%v): %s", p.Nodes, p.Fake, p.Err))
		}
	}
	if res.AppFiles != nil && res.AppFiles.Err != "" {
		res.Errors = append(res.Errors, "B6: "+res.AppFiles.Err)
	}
	if res.B1 != nil {
		for _, c := range res.B1.Cases {
			if c.Err != "" {
				res.Errors = append(res.Errors, fmt.Sprintf("B1 %s/%s: %s", c.Program, c.MPI, firstLine(c.Err)))
			}
		}
	}
	res.Finished = time.Now()
	files, err := Write(res, cfg.Out, cfg.Plotter)
	return res, files, err
}

// Render rewrites the summary and plots of a saved <date>-<host>.json; plotter
// is the torpor-plot binary.
func Render(jsonPath, out, plotter string) ([]string, error) {
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		return nil, err
	}
	var res Result
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("parse %s: %w", jsonPath, err)
	}
	if res.B1 != nil {
		res.B1.TorporSide = torporSide(*res.B1)
	}
	return Write(&res, out, plotter)
}

// withEnv builds a cluster, runs fn and always tears the cluster down.
// b9Rate is B9's --replica-rate: low enough that the copies of even the
// smallest point last several seconds.
const b9Rate = 32 << 20

func withEnv(ctx context.Context, cfg EnvConfig, fn func(e *Env)) error {
	e, err := NewEnv(ctx, cfg)
	if err != nil {
		return err
	}
	fn(e)
	return e.Close()
}

// ckptPoints lists the (MiB, job-nodes) points of B2/B3.
func ckptPoints(p Plan) [][2]int {
	var out [][2]int
	seen := map[[2]int]bool{}
	add := func(m, n int) {
		if !seen[[2]int{m, n}] {
			seen[[2]int{m, n}] = true
			out = append(out, [2]int{m, n})
		}
	}
	if p.Matrix {
		for _, n := range p.Nodes {
			for _, m := range p.MemMiB {
				add(m, n)
			}
		}
		return out
	}
	for _, m := range p.MemMiB {
		add(m, 1)
	}
	for _, n := range p.Nodes {
		add(p.NodesMiB, n)
	}
	return out
}

func maxOf(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// Write writes <date>-<host>.json (with its summary, also copied to
// latest.json), .md, the plots (drawn by plotter, the torpor-plot binary), and
// latest.md into out.
func Write(res *Result, out, plotter string) ([]string, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	base := filepath.Join(out, res.Started.Format("2006-01-02")+"-"+res.Machine.Host)
	sum := Summarize(res)
	res.Summary = &sum
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return nil, err
	}
	files := []string{base + ".json", filepath.Join(out, "latest.json"), base + ".md"}
	for _, f := range files[:2] {
		if err := os.WriteFile(f, data, 0o644); err != nil {
			return nil, err
		}
	}
	plots, perr := Plots(res, base, plotter)
	files = append(files, plots...)
	md := Markdown(res, plots)
	if perr != nil {
		md += "\nPlots failed: " + perr.Error() + "\n"
	}
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, "latest.md"), []byte(md), 0o644); err != nil {
		return nil, err
	}
	return append(files, filepath.Join(out, "latest.md")), nil
}
