package harness

import (
	"slices"
	"sort"
)

// Summary is the run's headline numbers (bench/README.md, "latest.json and
// its summary" defines each). A key whose data the run did not measure is
// nil (JSON null), never estimated.
type Summary struct {
	UnlockToTCPP95Ms          *float64 `json:"unlock_to_tcp_p95_ms"`
	CheckpointOverRawMax      *float64 `json:"checkpoint_over_raw_max"`
	RestartOverRawMax         *float64 `json:"restart_over_raw_max"`
	MigrationDowntimeMs256MiB *float64 `json:"migration_downtime_ms_256MiB"`
	MigrationDowntimeMs1GiB   *float64 `json:"migration_downtime_ms_1GiB"`
	SteadyOverheadPct         *float64 `json:"steady_overhead_pct"`
	StartupMsOverMpirun       *float64 `json:"startup_ms_over_mpirun"`
	CoordinationMs256         *float64 `json:"coordination_ms_256"`
}

// The B1 program the summary's B1 keys come from.
const summaryProgram = "ring"

// Summarize computes the summary from r's own samples.
func Summarize(r *Result) Summary {
	var s Summary
	// unlock → first TCP segment: every sample of B3 points with a TCP
	// peer (≥ 2 job-nodes) and of B4.
	var tcp []float64
	for _, p := range r.Ckpt {
		if p.Err == "" && p.Nodes >= 2 {
			tcp = append(tcp, p.RestartTCP.Samples...)
		}
	}
	for _, p := range r.Migrate {
		if p.Err == "" {
			tcp = append(tcp, p.TCP.Samples...)
		}
	}
	if len(tcp) > 0 {
		sort.Float64s(tcp)
		s.UnlockToTCPP95Ms = ptr(quantile(tcp, 0.95))
	}
	for _, p := range r.Ckpt {
		if p.Err != "" {
			continue
		}
		s.CheckpointOverRawMax = maxPtr(s.CheckpointOverRawMax, p.TorporWall, p.RawSeqWall)
		s.RestartOverRawMax = maxPtr(s.RestartOverRawMax, p.RestartWall, p.RawRestoreWall)
	}
	s.MigrationDowntimeMs256MiB = downtime(r.Migrate, 256)
	s.MigrationDowntimeMs1GiB = downtime(r.Migrate, 1024)
	s.CoordinationMs256 = coordination256(r.Coord)
	if r.B1 != nil {
		s.SteadyOverheadPct, s.StartupMsOverMpirun = b1Summary(r.B1)
	}
	return s
}

// maxPtr is the larger of *cur and a's median over b's, when both were measured.
func maxPtr(cur *float64, a, b Stat) *float64 {
	if a.N == 0 || b.N == 0 || b.Median <= 0 {
		return cur
	}
	v := a.Median / b.Median
	if cur != nil && *cur >= v {
		return cur
	}
	return ptr(v)
}

// downtime is the smallest median downtime of the B4 rows of mib MiB (one
// row per migration mode, when there are several).
func downtime(ps []MigratePoint, mib int) *float64 {
	var best *float64
	for _, p := range ps {
		if p.MiB != mib || p.Err != "" || p.Downtime.N == 0 {
			continue
		}
		if best == nil || p.Downtime.Median < *best {
			best = ptr(p.Downtime.Median)
		}
	}
	return best
}

// b1Summary is the steady-state overhead of the long mode's Open MPI ring,
// and the start-up (launch → the first rank in main) of torpor run over
// plain mpirun: for each MPI library, the median of torpor's ring runs,
// short and long, minus plain mpirun's; the larger of the libraries.
func b1Summary(b *B1Result) (steady, startup *float64) {
	plain, tor := map[string][]float64{}, map[string][]float64{}
	for _, c := range b.Cases {
		if c.Program != summaryProgram || c.Err != "" {
			continue
		}
		if c.PlainStart != nil {
			plain[c.MPI] = append(plain[c.MPI], c.PlainStart.FirstRank.Samples...)
		}
		if c.TorporStart != nil {
			tor[c.MPI] = append(tor[c.MPI], c.TorporStart.FirstRank.Samples...)
		}
	}
	for _, c := range b.Long {
		if c.Program != summaryProgram || c.Err != "" {
			continue
		}
		if c.Overhead != nil && c.MPI == "openmpi" {
			steady = ptr(c.Overhead.Pct)
		}
		for _, r := range c.Runs {
			if (r.Err != "" && !r.Hung) || r.FirstRankMs <= 0 {
				continue
			}
			if r.Side == "plain" {
				plain[c.MPI] = append(plain[c.MPI], r.FirstRankMs)
			} else {
				tor[c.MPI] = append(tor[c.MPI], r.FirstRankMs)
			}
		}
	}
	for _, mpi := range []string{"openmpi", "mpich", "mpich42"} {
		if len(plain[mpi]) > 0 && len(tor[mpi]) > 0 {
			d := NewStat(tor[mpi]).Median - NewStat(plain[mpi]).Median
			if startup == nil || d > *startup {
				startup = ptr(d)
			}
		}
	}
	return steady, startup
}

func ptr(v float64) *float64 { return &v }

// coordination256 is the median overhead of B5's fake point at 256
// job-nodes with the catalog on a fresh ext4 (runCoordFakeExt4); in a run
// from before that point existed, the one in the work directory.
func coordination256(ps []CoordPoint) *float64 {
	fresh := slices.ContainsFunc(ps, func(p CoordPoint) bool { return p.FreshExt4 && p.Nodes == 256 })
	for _, p := range ps {
		if p.Fake && !p.Tmpfs && p.FreshExt4 == fresh && p.Nodes == 256 && p.Err == "" && p.Overhead.N > 0 {
			return ptr(p.Overhead.Median)
		}
	}
	return nil
}
