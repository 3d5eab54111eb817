package harness

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// CkptPoint is B2 (checkpoint) and B3 (restart) for one memory size and
// number of job-nodes, torpor beside raw CRIU and a plain write.
type CkptPoint struct {
	MiB   int `json:"mib_per_node"`
	Nodes int `json:"nodes"`

	// B2
	Torpor []CkptSample `json:"torpor"`
	// TorporWarmup: the untimed checkpoints before Torpor (ckptWarmups),
	// kept to show what the first checkpoints of a job cost here.
	TorporWarmup []CkptSample    `json:"torpor_warmup"`
	TorporWall   Stat            `json:"torpor_wall"`
	Phases       map[string]Stat `json:"torpor_phases"`
	CRIUSum      Stat            `json:"torpor_criu_sum"`
	Bytes        int64           `json:"bytes"` // images of one checkpoint, all job-nodes (median sample)
	RawSeq       []RawDump       `json:"raw_seq"`
	RawSeqWall   Stat            `json:"raw_seq_wall"`
	RawPar       []RawDump       `json:"raw_par"`
	RawParWall   Stat            `json:"raw_par_wall"`
	RawBytes     int64           `json:"raw_bytes"`
	// RawWarmup: the untimed raw dump before RawSeq, RawPar and RawHashed.
	RawWarmup []RawDump `json:"raw_warmup"`
	// RawHashed: raw seq with the memory images hashed as a shim hashes
	// them (RawDumpOptions.Hash), what of torpor/raw seq is the hashing.
	RawHashed     []RawDump     `json:"raw_hashed"`
	RawHashedWall Stat          `json:"raw_hashed_wall"`
	Write         []WriteSample `json:"write"`
	WriteWall     Stat          `json:"write_wall"`
	FsyncWall     Stat          `json:"fsync_wall"`
	Checkpoints   []string      `json:"checkpoints"`

	// B3
	Suspends       []CkptSample    `json:"suspends"`
	Restarts       []RestartSample `json:"restarts"`
	RestartWall    Stat            `json:"restart_wall"`
	RestartPhases  map[string]Stat `json:"restart_phases"`
	RestartTCP     Stat            `json:"restart_unlock_to_tcp"`
	RawRestores    []RawRestore    `json:"raw_restores"`
	RawRestoreWall Stat            `json:"raw_restore_wall"`
	RawRestoreTCP  Stat            `json:"raw_unlock_to_tcp"`
	RawRestorePar  []RawRestore    `json:"raw_restores_par"`
	// RawRestoreVerified: raw restores one at a time with the memory
	// images verified as a shim verifies them (RawRestoreOptions.Verify).
	RawRestoreVerified     []RawRestore `json:"raw_restores_verified"`
	RawRestoreVerifiedWall Stat         `json:"raw_restore_verified_wall"`
	// RawRestoreLazy: raw restores one at a time, CRIU's lazy-pages
	// daemon filling the memory from the same images (RawRestoreOptions.Lazy).
	RawRestoreLazy     []RawRestore `json:"raw_restores_lazy,omitempty"`
	RawRestoreLazyWall Stat         `json:"raw_restore_lazy_wall"`
	RawRestoreParWl    Stat         `json:"raw_restore_par_wall"`

	Err string `json:"error,omitempty"`
}

// runCkptPoint measures one point. Everything it starts is gone when it returns.
func runCkptPoint(ctx context.Context, e *Env, mib, nodes, reps, restartReps int, logf func(string, ...any)) (p CkptPoint) {
	p = CkptPoint{MiB: mib, Nodes: nodes, Phases: map[string]Stat{}, RestartPhases: map[string]Stat{}}
	// One job-node has no peer to stream to: its ranks would talk through
	// shared memory, so it runs memhog alone.
	w := Workload{MiB: mib, Ring: nodes > 1, ReadRate: "4M"}
	hosts := make([]string, nodes)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("h%d", i+1)
	}
	id := fmt.Sprintf("b2-%dm-%dn", mib, nodes)
	if err := p.torpor(ctx, e, id, hosts, w, reps, restartReps, logf); err != nil {
		p.Err = "torpor: " + err.Error()
		return p
	}
	if err := p.raw(ctx, e, id+"-raw", hosts, w, reps, restartReps); err != nil {
		p.Err = "raw criu: " + err.Error()
		return p
	}
	for r := 0; r < reps; r++ {
		ws, err := plainWrite(filepath.Join(e.CkptDir(), "plain-write"), p.Bytes, nodes)
		if err != nil {
			p.Err = err.Error()
			return p
		}
		p.Write = append(p.Write, ws)
	}
	var wr, fs []time.Duration
	for _, s := range p.Write {
		wr, fs = append(wr, s.Write), append(fs, s.Write+s.Fsync)
	}
	p.WriteWall, p.FsyncWall = DurStat(wr), DurStat(fs)
	return p
}

// ckptWarmups is how many checkpoints of a B2 job come before its timed
// ones. torpor keeps a job's newest checkpoint while it writes the next and
// prunes it after that one's commit, so its first two checkpoints write into
// memory nothing freed just before, which on this VM faults on the host
// (bench/README.md, "Settling between samples"); from the third on, each
// writes into the memory the prune before it freed. The raw side removes
// its images before each dump, so one untimed dump brings it to the same
// state. Both are kept in the results (TorporWarmup, RawWarmup).
const ckptWarmups = 2

func (p *CkptPoint) torpor(ctx context.Context, e *Env, id string, hosts []string, w Workload, reps, restartReps int, logf func(string, ...any)) error {
	j, err := e.StartJob(ctx, id, hosts, w)
	if err != nil {
		return err
	}
	defer j.Stop(context.WithoutCancel(ctx))
	time.Sleep(300 * time.Millisecond) // queues fill up
	for r := 0; r < ckptWarmups; r++ {
		s, h, err := j.Checkpoint(ctx, false)
		if err != nil {
			return fmt.Errorf("warm-up checkpoint %d: %w", r, err)
		}
		logf("B2 %d MiB x %d: torpor warm-up checkpoint %s in %v (not a sample)", p.MiB, p.Nodes, h, s.Wall.Round(time.Millisecond))
		p.TorporWarmup = append(p.TorporWarmup, s)
	}
	for r := 0; r < reps; r++ {
		s, h, err := j.Checkpoint(ctx, false)
		if err != nil {
			return fmt.Errorf("checkpoint %d: %w", r, err)
		}
		logf("B2 %d MiB x %d: torpor checkpoint %s in %v (%d bytes)", p.MiB, p.Nodes, h, s.Wall.Round(time.Millisecond), s.Total)
		p.Torpor = append(p.Torpor, s)
		p.Checkpoints = append(p.Checkpoints, h)
	}
	for r := 0; r < restartReps; r++ {
		cs, rs, err := j.SuspendRestart(ctx)
		if err != nil {
			return fmt.Errorf("suspend/restart %d: %w", r, err)
		}
		logf("B3 %d MiB x %d: restart in %v, unlock→tcp %v", p.MiB, p.Nodes, rs.Wall.Round(time.Millisecond), rs.Progress.TCP.Round(time.Millisecond))
		p.Suspends = append(p.Suspends, cs)
		p.Restarts = append(p.Restarts, rs)
	}
	var walls, sums []time.Duration
	phases := phaseDurations{}
	for _, s := range p.Torpor {
		walls, sums = append(walls, s.Wall), append(sums, s.CRIUSum)
		phases.add(s.Phases)
	}
	p.TorporWall, p.CRIUSum = DurStat(walls), DurStat(sums)
	phases.statsInto(p.Phases)
	p.Bytes = medianBytes(p.Torpor)
	var rw, tcp []time.Duration
	rph := phaseDurations{}
	for _, s := range p.Restarts {
		rw, tcp = append(rw, s.Wall), append(tcp, s.Progress.TCP)
		rph.add(s.Phases)
	}
	p.RestartWall, p.RestartTCP = DurStat(rw), DurStat(tcp)
	rph.statsInto(p.RestartPhases)
	return nil
}

func medianBytes(s []CkptSample) int64 {
	if len(s) == 0 {
		return 0
	}
	b := make([]float64, len(s))
	for i, x := range s {
		b[i] = float64(x.Total)
	}
	return int64(NewStat(b).Median)
}

func (p *CkptPoint) raw(ctx context.Context, e *Env, id string, hosts []string, w Workload, reps, restartReps int) error {
	r, err := e.StartRaw(ctx, id, hosts, w)
	if err != nil {
		return err
	}
	defer r.Close()
	time.Sleep(300 * time.Millisecond)
	d, _, err := r.Dump(ctx, "warmup", RawDumpOptions{LeaveRunning: true})
	if err != nil {
		return fmt.Errorf("warm-up dump: %w", err)
	}
	p.RawWarmup = append(p.RawWarmup, d)
	for i := 0; i < reps; i++ {
		d, _, err := r.Dump(ctx, fmt.Sprintf("seq%d", i), RawDumpOptions{LeaveRunning: true})
		if err != nil {
			return err
		}
		p.RawSeq = append(p.RawSeq, d)
		d, _, err = r.Dump(ctx, fmt.Sprintf("par%d", i), RawDumpOptions{Parallel: true, LeaveRunning: true})
		if err != nil {
			return err
		}
		p.RawPar = append(p.RawPar, d)
		d, _, err = r.Dump(ctx, fmt.Sprintf("hashed%d", i), RawDumpOptions{LeaveRunning: true, Hash: true})
		if err != nil {
			return err
		}
		p.RawHashed = append(p.RawHashed, d)
	}
	for i := 0; i < restartReps; i++ {
		for _, o := range []RawRestoreOptions{{}, {Parallel: true}, {Verify: true}, {Lazy: true}} {
			_, dirs, err := r.Dump(ctx, fmt.Sprintf("stop%d", i), RawDumpOptions{})
			if err != nil {
				return err
			}
			memBase, err := r.memCounters()
			if err != nil {
				return err
			}
			rr, err := r.Restore(ctx, dirs, o, memBase)
			if err != nil {
				return err
			}
			switch {
			case o.Parallel:
				p.RawRestorePar = append(p.RawRestorePar, rr)
			case o.Verify:
				p.RawRestoreVerified = append(p.RawRestoreVerified, rr)
			case o.Lazy:
				p.RawRestoreLazy = append(p.RawRestoreLazy, rr)
			default:
				p.RawRestores = append(p.RawRestores, rr)
			}
		}
	}
	var seq, par, hashed, rs, rp, rv, rl, tcp []time.Duration
	for _, d := range p.RawSeq {
		seq = append(seq, d.Wall)
		p.RawBytes = d.Bytes
	}
	for _, d := range p.RawHashed {
		hashed = append(hashed, d.Wall)
	}
	for _, d := range p.RawPar {
		par = append(par, d.Wall)
	}
	for _, d := range p.RawRestores {
		rs, tcp = append(rs, d.Wall), append(tcp, d.Progress.TCP)
	}
	for _, d := range p.RawRestoreVerified {
		rv = append(rv, d.Wall)
	}
	for _, d := range p.RawRestoreLazy {
		rl = append(rl, d.Wall)
	}
	for _, d := range p.RawRestorePar {
		rp = append(rp, d.Wall)
		tcp = append(tcp, d.Progress.TCP)
	}
	p.RawSeqWall, p.RawParWall, p.RawHashedWall = DurStat(seq), DurStat(par), DurStat(hashed)
	p.RawRestoreWall, p.RawRestoreParWl, p.RawRestoreTCP = DurStat(rs), DurStat(rp), DurStat(tcp)
	p.RawRestoreVerifiedWall, p.RawRestoreLazyWall = DurStat(rv), DurStat(rl)
	return nil
}
