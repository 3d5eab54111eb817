package harness

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

func f0(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", v)
}

func f1(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", v)
}

func f2(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}

// tcpCell is unlock→TCP, or n/a for a job-node without a TCP peer.
func tcpCell(nodes int, s Stat) string {
	if nodes < 2 {
		return "n/a (no TCP)"
	}
	return med(s)
}

// med prints a Stat as "median (min–max)" in ms.
func med(s Stat) string {
	if s.N == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%s (%s–%s)", f0(s.Median), f0(s.Min), f0(s.Max))
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// mbps is bytes per second of a transfer taking ms milliseconds, in MiB/s.
func mbps(b int64, ms float64) string {
	if ms <= 0 {
		return "n/a"
	}
	return f0(float64(b) / (1 << 20) / (ms / 1000))
}

// Markdown is the summary of a run.
func Markdown(r *Result, plots []string) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	m := r.Machine
	w("# torpor benchmarks — %s run, %s on %s\n\n", r.Mode, r.Started.Format("2006-01-02 15:04"), m.Host)
	w("Times in milliseconds: median (min–max) over the repetitions; ratios of medians. ")
	w("How to read them and how to reproduce them: bench/README.md.\n\n")
	w("| machine | |\n|---|---|\n")
	w("| kernel | %s |\n| CPU | %d × %s |\n| memory | %s |\n| CRIU | %s (%s) |\n| storage | %s |\n| Go | %s |\n| Open MPI | %s |\n| MPICH | %s |\n| BLAKE3, one CPU | %.0f MB/s alone, %.0f MB/s while another CPU hashes too |\n| memory's first touch | %.2f µs per 4 KiB page (%.3f µs touched again) |\n| duration | %s |\n\n",
		m.Kernel, m.CPUs, m.CPU, m.MemTotal, m.CRIU, m.CRIUPath, m.Storage, m.Go, m.OpenMPI, m.MPICH, m.HashMBps, m.HashMBpsBeside, m.FaultUs, m.TouchUs,
		r.Finished.Sub(r.Started).Round(1e9))
	w("Plan: %d checkpoints per point, %d suspend+restart cycles, %d migrations per size and mode (%d from 1 GiB), %d B1 repetitions.\n\n",
		r.Plan.Reps, r.Plan.RestartReps, r.Plan.MigrateReps, r.Plan.MigrateBigReps, r.Plan.B1Reps)
	for _, e := range r.Errors {
		w("**Failed:** %s\n\n", e)
	}
	w("## Summary\n\nThe keys of `summary` in this run's JSON and in latest.json (bench/README.md defines them; \"not measured\": this run did not measure it).\n\n%s\n", SummaryTable(Summarize(r), verdicts(r)))
	if a := r.AppFiles; a != nil && a.Err == "" {
		w("**B6 capture of the application's files: steady checkpoint with / without = %s** (target ≤ 1.10; %d MiB log growing %d MiB between checkpoints).\n\n",
			f2(Ratio(a.With.Wall.Median, a.Without.Wall.Median)), a.LogMiB, a.GrowMiB)
	}

	if r.B1 != nil {
		w("## B1 runtime overhead (4 ranks, one machine)\n\n")
		w("torpor side: **%s**.\n\n", r.B1.TorporSide)
		w("| program | MPI | args | plain mpirun ms | spread | torpor run ms | torpor / plain | checksum |\n|---|---|---|---|---|---|---|---|\n")
		for _, c := range r.B1.Cases {
			tor, ratio := "not available", "n/a"
			if c.Torpor != nil {
				tor, ratio = med(*c.Torpor), f2(Ratio(c.Torpor.Median, c.Plain.Median))
			}
			if c.TorpErr != "" {
				tor = "failed: " + strings.ReplaceAll(firstLine(c.TorpErr), "|", "/")
			}
			if c.Err != "" {
				tor = "error: " + firstLine(c.Err)
			}
			w("| %s | %s | `%s` | %s | %s%% | %s | %s | %s |\n", c.Program, c.MPI, strings.Join(c.Args, " "), med(c.Plain),
				f0(100*c.Plain.Spread()), tor, ratio, c.Checksum)
		}
		w("\n")
		b1StartupTable(w, r.B1)
		b1LongSection(w, r.B1)
	}

	if len(r.Ckpt) > 0 {
		// ckptTable writes a table of r.Ckpt with 14 columns: head, then the row
		// of each point, or a failed row for a point whose run failed.
		ckptTable := func(head string, row func(p CkptPoint)) {
			w("%s", head)
			w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
			for _, p := range r.Ckpt {
				if p.Err != "" {
					w("| %d | %d | failed: %s |||||||||||||\n", p.MiB, p.Nodes, firstLine(p.Err))
					continue
				}
				row(p)
			}
		}
		// splitTable writes a table that splits torpor's time over raw
		// CRIU's into raw CRIU with torpor's hashing (with: what it does)
		// beside it, and the rest of torpor; times gives a point's raw,
		// raw + hashing and torpor times.
		splitTable := func(title, intro, with string, times func(p CkptPoint) (raw, withHash, torpor Stat)) {
			w("%s\n\n%s\n\n", title, intro)
			w("| MiB/node | nodes | raw seq | raw seq + %[1]s | torpor | **raw+%[1]s/raw** | **torpor/raw+%[1]s** |\n|---|---|---|---|---|---|---|\n", with)
			for _, p := range r.Ckpt {
				raw, withHash, torpor := times(p)
				if p.Err != "" || withHash.N == 0 {
					continue
				}
				w("| %d | %d | %s | %s | %s | **%s** | **%s** |\n", p.MiB, p.Nodes, med(raw), med(withHash), med(torpor),
					f2(Ratio(withHash.Median, raw.Median)), f2(Ratio(torpor.Median, withHash.Median)))
			}
			w("\n")
		}
		w("## B2 checkpoint latency (leave-running)\n\n")
		w("Each job-node: memhog of the given size + one TCP stream to the next job-node (a ring). ")
		w("torpor = the whole coordinated checkpoint as the caller sees it. raw seq/par = `criu dump --leave-running --tcp-established` of the same workload in plain sandboxes, one at a time / all at once (on one machine CRIU dumps are serialized by torpor's machine-wide dump lock, so par ≈ seq). write = a plain write(2) of the same bytes to the same directory (page cache, as CRIU writes); +fsync = also made durable.\n\n")
		ckptTable("| MiB/node | nodes | image MiB | torpor ms | raw seq ms | raw par ms | write ms | write+fsync ms | **torpor/raw seq** | **torpor/raw par** | **torpor/write** | **torpor/write+fsync** | raw seq/write | torpor MiB/s |\n", func(p CkptPoint) {
			w("| %d | %d | %s | %s | %s | %s | %s | %s | **%s** | **%s** | **%s** | **%s** | %s | %s |\n", p.MiB, p.Nodes, mib(p.Bytes),
				med(p.TorporWall), med(p.RawSeqWall), med(p.RawParWall), med(p.WriteWall), med(p.FsyncWall),
				f2(Ratio(p.TorporWall.Median, p.RawSeqWall.Median)), f2(Ratio(p.TorporWall.Median, p.RawParWall.Median)),
				f2(Ratio(p.TorporWall.Median, p.WriteWall.Median)), f2(Ratio(p.TorporWall.Median, p.FsyncWall.Median)),
				f2(Ratio(p.RawSeqWall.Median, p.WriteWall.Median)), mbps(p.Bytes, p.TorporWall.Median))
		})
		w("\n### B2 by phase (torpor, median ms)\n\n")
		w("| MiB/node | nodes | %s | Σ CRIU | total |\n|---|---|%s\n", strings.Join(ckptPhases, " | "), strings.Repeat("---|", len(ckptPhases)+2))
		for _, p := range r.Ckpt {
			if p.Err != "" {
				continue
			}
			w("| %d | %d |", p.MiB, p.Nodes)
			for _, ph := range ckptPhases {
				w(" %s |", f1(p.Phases[ph].Median))
			}
			w(" %s | %s |\n", f1(p.CRIUSum.Median), f1(p.TorporWall.Median))
		}
		w("\n`dump` contains CRIU (Σ CRIU) plus the shim's own work (RDMA check, output copy, the node manifest: the memory images' BLAKE3 is computed while CRIU writes them, the rest after). `commit` is the catalog commit between the last dump and the first unlock; `resume` is unlock then thaw. `open` and `close` are the coordinator's own work before its first and after its last call to a shim (the job registry written, each time with an fsync; the checkpoint begun in the catalog).\n\n")

		splitTable("### B2 with and without the hashing (median ms)", "raw seq + hash = raw seq with each job-node's memory images hashed as a shim hashes them, by the same stream hasher while CRIU writes them, until the hashes are done. Its ratio to raw seq is what the hashing costs; torpor's ratio to it is the rest of torpor.",
			"hash", func(p CkptPoint) (Stat, Stat, Stat) { return p.RawSeqWall, p.RawHashedWall, p.TorporWall })
		w("## B3 restart latency\n\n")

		w("torpor = `Restart` of a suspended job (verify the job manifest, node manifests and sizes; restore every job-node locked while its shim verifies the images' contents; unlock, thaw). raw = `criu restore` of the same workload's images into its sandboxes, one at a time (seq) and all at once (par), then the veth up. unlock→TCP = time from the end of the unlock until every job-node's namespace has received a TCP segment again (Tcp InSegs in /proc/<pid>/net/snmp, polled every 2 ms from the last thaw on, while `Restart` still returns); hundreds of ms would mean the peers wait for a retransmission timeout.\n\n")
		ckptTable("| MiB/node | nodes | image MiB | torpor restart ms | verify | restore | unlock | raw restore seq ms | raw restore par ms | **torpor/raw seq** | **torpor/raw par** | **torpor/write** | torpor unlock→TCP ms | raw unlock→TCP ms |\n", func(p CkptPoint) {
			w("| %d | %d | %s | %s | %s | %s | %s | %s | %s | **%s** | **%s** | **%s** | %s | %s |\n", p.MiB, p.Nodes, mib(p.Bytes),
				med(p.RestartWall), f0(p.RestartPhases["verify"].Median), f0(p.RestartPhases["restore"].Median), f1(p.RestartPhases["unlock"].Median),
				med(p.RawRestoreWall), med(p.RawRestoreParWl),
				f2(Ratio(p.RestartWall.Median, p.RawRestoreWall.Median)), f2(Ratio(p.RestartWall.Median, p.RawRestoreParWl.Median)),
				f2(Ratio(p.RestartWall.Median, p.WriteWall.Median)), tcpCell(p.Nodes, p.RestartTCP), tcpCell(p.Nodes, p.RawRestoreTCP))
		})
		w("\n")
		splitTable("### B3 with and without the verification (median ms)", "raw seq + verify = raw restore seq with each job-node's memory images verified against a node manifest while CRIU restores, by the shim's code (catalog.NodeImages.Verify), until both are done. Its ratio to raw seq is what the verification costs; torpor's ratio to it is the rest of torpor.",
			"verify", func(p CkptPoint) (Stat, Stat, Stat) { return p.RawRestoreWall, p.RawRestoreVerifiedWall, p.RestartWall })
		splitTable("### B3 against CRIU's lazy restore (median ms)", "raw seq + lazy = raw restore seq in which CRIU restores lazily and a `criu lazy-pages` daemon, started and ready before the clock, fills each job-node's memory from the same images; it ends when every daemon has filled every page. This is how a shim restores a job-node with 8 MiB of memory images or more (docs/protocol.md \"Memory filled by a lazy-pages daemon\"), without the verification, the freeze while the daemon fills and the rest of torpor: torpor's ratio to it is what torpor adds to that way of restoring.",
			"lazy", func(p CkptPoint) (Stat, Stat, Stat) { return p.RawRestoreWall, p.RawRestoreLazyWall, p.RestartWall })
	}

	if len(r.Migrate) > 0 {
		w("## B4 migration downtime of one job-node\n\n")
		w("A 2-job-node ring; n0 moves between h1 and a spare host, each row's migrations forced to one mode (`--postcopy never|always`). Downtime = the coordinator's: the whole job frozen, from the first freeze to the end of the thaw; median (min–max). Last page = post-copy only: from the first freeze until the destination had every page (the job runs meanwhile). Phases are medians of the shim calls; `destroy` (of the old copy) comes after the thaw, outside the downtime, and in a post-copy row after the last page (in runs up to 2026-12-04 03:44 a stop-copy's came before the unlock, inside the downtime). `of it CRIU` = the dump phase's time inside CRIU (a post-copy's: until CRIU had written the images and served the pages); the rest of the phase is the shim's own work around it. unlock→TCP = from the end of the unlock until every job-node's namespace received a TCP segment again.\n\n")
		w("| MiB | mode | image MiB | downtime ms | last page ms | freeze+drain+lock | dump | of it CRIU | restore | destroy | unlock+thaw | unlock→TCP ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range r.Migrate {
			if p.Err != "" && len(p.Samples) == 0 {
				w("| %d | %s | failed: %s ||||||||||\n", p.MiB, p.Mode, firstLine(p.Err))
				continue
			}
			ph := p.Phases
			last := "–"
			if p.LastPage.N > 0 {
				last = med(p.LastPage)
			}
			criuDump := "–"
			if c, ok := ph["criu_dump"]; ok && c.N > 0 {
				criuDump = f1(c.Median)
			}
			w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.MiB, p.Mode, mib(p.Bytes), med(p.Downtime), last,
				f1(ph["freeze"].Median+ph["drain"].Median+ph["lock"].Median), f1(ph["dump"].Median), criuDump, f1(ph["restore"].Median),
				f1(ph["destroy"].Median), f1(ph["unlock"].Median+ph["thaw"].Median), med(p.TCP))
			if p.Err != "" {
				w("| %d | %s | then failed: %s ||||||||||\n", p.MiB, p.Mode, firstLine(p.Err))
			}
		}
		w("\n")
	}

	if len(r.Streamed) > 0 {
		w("## B8 migration on hosts that share no segment (VXLAN), images streamed\n\n")
		w("A routed cluster (each host on a subnet of its own behind a router; `torpor sim up --routed`), job-node traffic over the shims' VXLAN overlay. The same 2-job-node ring as B4; n0 moves between h1 and h3 with stop-copy, %d times each way of moving its images, in turns: through the checkpoint directory, and streamed from the source's shim to the destination's over mutual TLS (the image protocol; each shim with an image directory of its own; docs/protocol.md, \"Streamed images\"). Columns as in B4; streamed/shared = ratio of the downtime medians at the same size.\n\n", r.Plan.StreamReps)
		w("| MiB | images | image MiB | downtime ms | freeze+drain+lock | dump | restore (streamed: with the fetch) | destroy | unlock+thaw | unlock→TCP ms | **streamed / shared** |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		shared := map[int]float64{}
		for _, p := range r.Streamed {
			if p.Err != "" && len(p.Samples) == 0 {
				w("| %d | %s | failed: %s |||||||||\n", p.MiB, p.Mode, firstLine(p.Err))
				continue
			}
			ratio := "–"
			if strings.HasSuffix(p.Mode, "streamed") && shared[p.MiB] > 0 {
				ratio = "**" + f2(p.Downtime.Median/shared[p.MiB]) + "**"
			} else {
				shared[p.MiB] = p.Downtime.Median
			}
			ph := p.Phases
			w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.MiB, p.Mode, mib(p.Bytes), med(p.Downtime),
				f1(ph["freeze"].Median+ph["drain"].Median+ph["lock"].Median), f1(ph["dump"].Median), f1(ph["restore"].Median),
				f1(ph["destroy"].Median), f1(ph["unlock"].Median+ph["thaw"].Median), med(p.TCP), ratio)
			if p.Err != "" {
				w("| %d | %s | then failed: %s |||||||||\n", p.MiB, p.Mode, firstLine(p.Err))
			}
		}
		w("\n")
	}

	if len(r.Replication) > 0 {
		w("## B9 replication's effect on a running job\n\n")
		w("The routed cluster of B8 with host-local checkpoints (`torpor coordinator --local-checkpoints`, one replica, `--replica-rate %d MiB/s` per copy): a 2-job-node ring on h1 and h2 whose memhogs run without pause (their progress rate is the CPU they get). Progress = memhog iterations per second, summed over the job-nodes, over %v before the checkpoint, from its commit until the coordinator's `replicated` event, and over %v after. On this 2-core machine the copies (TLS, SHA-256 verification, the disk) take CPU the job would have.\n\n",
			b9Rate>>20, b9Window, b9Window)
		w("| MiB per job-node | checkpoint ms | replication ms | copied MiB | progress before /s | during /s | after /s | **during / before** |\n|---|---|---|---|---|---|---|---|\n")
		for _, p := range r.Replication {
			if p.Err != "" {
				w("| %d | failed: %s |||||||\n", p.MiB, firstLine(p.Err))
				continue
			}
			w("| %d | %s | %s | %s | %.0f | %.0f | %.0f | **%s** |\n", p.MiB, f1(float64(p.Checkpoint)/1e6), f1(float64(p.Replication)/1e6), mib(p.Bytes),
				p.Before, p.During, p.After, f2(p.DuringOverBefore))
		}
		w("\n")
	}

	if len(r.Coord) > 0 {
		w("## B5 coordination overhead\n\n")
		w("Overhead = checkpoint wall time − Σ time inside CRIU (dumps are serialized on one machine, so Σ is what they cost). Real: sandboxes with a 1 MiB memhog and a slow TCP ring, spread over %d simulated hosts. Fake: the real coordinator and on-disk catalog with shims that return at once (Dump writes a 4 KiB image and its node manifest, without the fsyncs a shim on a host of its own makes on its own disk: here they would all queue on one journal), spread over 16 fake hosts. %sOld checkpoints are pruned after each; their files are removed in the background, which the benchmark waits for between checkpoints (checkpoints minutes apart find it long done). Frozen = how long the job stood still in a checkpoint: from the first freeze to the end of the last thaw.\n\n", r.Plan.CoordHosts, coordWhere(r.Coord))
		w("| job-nodes | CRIU | checkpoint ms | Σ CRIU ms | **overhead ms** | overhead per job-node ms | frozen ms |\n|---|---|---|---|---|---|---|\n")
		for _, p := range r.Coord {
			kind := "real"
			switch {
			case p.Tmpfs:
				kind = "fake, catalog on tmpfs"
			case p.FreshExt4:
				kind = "fake, catalog on a fresh ext4"
			case p.Fake:
				kind = "fake"
			}
			if p.Fake && !p.Tmpfs && p.CatalogFS != "" {
				kind += ": " + p.CatalogFS
			}
			if p.Err != "" {
				w("| %d | %s | failed: %s |||||\n", p.Nodes, kind, firstLine(p.Err))
				continue
			}
			frozen := "–" // results from before 2026-12-04
			if p.Frozen.N > 0 && p.Frozen.Median > 0 {
				frozen = med(p.Frozen)
			}
			w("| %d | %s | %s | %s | **%s** | %s | %s |\n", p.Nodes, kind, med(p.Wall), f1(p.CRIUSum.Median), med(p.Overhead),
				f2(p.Overhead.Median/float64(p.Nodes)), frozen)
		}
		w("\n")
	}
	if a := r.AppFiles; a != nil {
		appFilesSection(w, r.Mode, a)
	}
	if len(r.Compress) > 0 {
		compressSection(w, r.Compress)
	}
	if len(plots) > 0 {
		w("## Plots\n\n")
		for _, p := range plots {
			w("![%s](%s)\n", filepath.Base(p), filepath.Base(p))
		}
		w("\n")
	}
	w("Caveats: one 2-core machine; hosts are network namespaces on one kernel; CRIU dumps are serialized machine-wide; images go to the page cache (write ms is the matching limit, write+fsync the durable one); the raw comparisons run after the torpor job is gone, on the same hosts; before every timed sample the benchmark waits for the coordinator's background work and writes every dirty page back (sync), and each side keeps only its newest images (bench/README.md, \"Settling between samples\").\n")
	return b.String()
}

// appFilesSection writes B6.
func appFilesSection(w func(string, ...any), mode string, a *AppFilesResult) {
	w("## B6 cost of capturing the application's files\n\n")
	size := ""
	if mode != "full" {
		size = " (the quick run's size; the full run, and the issue's target, use 1024 MiB)"
	}
	w("Two jobs of one job-node each run `applog` (bench/harness/applog): it holds a log open for appending, writes %d MiB into it at the start%s, and appends %d MiB when the benchmark signals it; the benchmark waits until its status says the append is done, then takes a leave-running checkpoint. ", a.LogMiB, size, a.GrowMiB)
	w("**with capture** runs on a host whose shim captures the application's files at every dump, as every shim does: the first checkpoint copies the log whole, each later one, as the log only grew, records its length. ")
	w("**without capture** runs on a host whose shim has `agent.Config.NoAppFiles` set (benchmarks only): the very same workload, file system and CRIU dump, with `appfiles.Capture` skipped. ")
	w("The two jobs' checkpoints alternate. The benchmark reads every checkpoint's `torpor-app/index.json` and fails if the log was not captured as described (or anything was captured without capture). --keep-max is %s MiB (the first capture copies the whole log; the default limit is 1024 MiB).\n\n", mib(a.KeepMax))
	if a.Err != "" {
		w("**Failed:** %s\n\n", firstLine(a.Err))
		return
	}
	w("| | steady checkpoint ms | dump phase ms | Σ CRIU ms | dump − CRIU ms | MiB copied per steady checkpoint | first checkpoint ms | MiB copied by the first |\n|---|---|---|---|---|---|---|---|\n")
	for _, x := range []struct {
		name string
		s    AppFilesSeries
	}{{"with capture", a.With}, {"without capture", a.Without}} {
		var copied []float64
		for _, c := range x.s.Captures {
			copied = append(copied, float64(c.Bytes))
		}
		var shim []time.Duration
		for _, c := range x.s.Steady {
			shim = append(shim, c.Phases["dump"]-c.CRIUSum)
		}
		w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", x.name, med(x.s.Wall), f1(x.s.Dump.Median), f1(x.s.CRIU.Median),
			f1(DurStat(shim).Median), mib(int64(NewStat(copied).Median)), f0(Ms(x.s.First.Wall)), mib(x.s.FirstCapture.Bytes))
	}
	w("\n`dump − CRIU` is, per checkpoint, the shim's own work in the dump phase (the capture, the output copy, the node manifest): the capture's cost shows there with less of the noise of the rest.\n")
	w("\n**steady with / without: %s** (target ≤ 1.10); dump phase with / without: %s. First checkpoint with capture (the log copied whole): %s ms, %s × the steady checkpoint without capture.\n\n",
		f2(Ratio(a.With.Wall.Median, a.Without.Wall.Median)), f2(Ratio(a.With.Dump.Median, a.Without.Dump.Median)),
		f0(Ms(a.With.First.Wall)), f1(Ratio(Ms(a.With.First.Wall), a.Without.Wall.Median)))
}

// b1StartupTable splits the short runs' wall time: start-up, teardown.
func b1StartupTable(w func(string, ...any), b *B1Result) {
	have := false
	for _, c := range b.Cases {
		have = have || c.PlainStart != nil
	}
	if !have {
		return
	}
	w("Where the wall time goes, from the same runs: ms since the launcher (`mpirun` or `torpor run`) was started until the earliest rank entered `main` (first rank) and until rank 0's `MPI_Init` returned, and from the last iteration's end until the launcher exited (teardown). The programs stamp CLOCK_REALTIME themselves (`-t`).\n\n")
	w("| program | MPI | plain first rank | torpor first rank | **Δ first rank** | plain MPI_Init | torpor MPI_Init | Δ MPI_Init | plain teardown | torpor teardown |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range b.Cases {
		if c.PlainStart == nil {
			continue
		}
		p := c.PlainStart
		t := &B1Startup{}
		if c.TorporStart != nil {
			t = c.TorporStart
		}
		w("| %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s |\n", c.Program, c.MPI, med(p.FirstRank), med(t.FirstRank),
			delta(t.FirstRank, p.FirstRank), med(p.Init), med(t.Init), delta(t.Init, p.Init), med(p.Teardown), med(t.Teardown))
	}
	w("\n")
}

// delta is a's median minus b's, or n/a.
func delta(a, b Stat) string {
	if a.N == 0 || b.N == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%+.0f", a.Median-b.Median)
}

// b1LongSection is the long mode: start-up and steady state apart.
func b1LongSection(w func(string, ...any), b *B1Result) {
	if len(b.Long) == 0 {
		return
	}
	w("### B1 long mode: start-up and steady state apart\n\n")
	w("Each run lasts %d s after rank 0's `MPI_Init` returned (`-T`); plain `mpirun` and `torpor run` alternate (plain, torpor, torpor, plain, …). ", b.Long[0].Secs)
	w("Steady rate = iterations per second from %.0f s after `MPI_Init` to the end, from the program's own stamps (`-t`, one every `-p` iterations, interpolated), in windows of %.0f s. ", b.Long[0].WarmupS, b.Long[0].WindowS)
	w("Overhead = (plain rate − torpor rate) / plain rate, of the medians over runs; the window range is the same overhead window by window; plain noise is (max − min) / median of the plain side's window rates: an overhead below it is not resolved. Targets: steady-state ≤ 1 %%, start-up (first rank) ≤ 150 ms above plain.\n\n")
	w("| program | MPI | args | run | side | first rank ms | MPI_Init ms | steady it/s | window it/s (min–max) | iterations | teardown ms | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range b.Long {
		if c.Err != "" {
			w("| %s | %s | `%s` | | | failed: %s |||||||\n", c.Program, c.MPI, strings.Join(c.Args, " "), firstLine(c.Err))
			continue
		}
		for i, r := range c.Runs {
			note := strings.ReplaceAll(r.Err, "|", "/")
			if r.Hung {
				note = "hung at finalize after its done line; ended and cancelled (measurements kept)"
			}
			ws := NewStat(r.Windows)
			rate, win, teardown := "n/a", "n/a", f0(r.TeardownMs)
			if r.Hung {
				teardown = "—"
			}
			if r.Rate > 0 {
				rate, win = f0(r.Rate), fmt.Sprintf("%s–%s", f0(ws.Min), f0(ws.Max))
			}
			w("| %s | %s | `%s` | %d | %s | %s | %s | %s | %s | %d | %s | %s |\n", c.Program, c.MPI, strings.Join(c.Args, " "), i+1, r.Side,
				f0(r.FirstRankMs), f0(r.InitMs), rate, win, r.Iters, teardown, note)
		}
	}
	w("\n| program | MPI | plain it/s | torpor it/s | **steady-state overhead** | window range | plain noise | runs plain/torpor |\n|---|---|---|---|---|---|---|---|\n")
	for _, c := range b.Long {
		o := c.Overhead
		if o == nil {
			w("| %s | %s | | | not measured (a side has no complete run) | | | |\n", c.Program, c.MPI)
			continue
		}
		w("| %s | %s | %s | %s | **%s %%** | %s … %s %% | %s %% | %d/%d |\n", c.Program, c.MPI, f0(o.PlainRate), f0(o.TorporRate),
			f2(o.Pct), f2(o.WindowMinPct), f2(o.WindowMaxPct), f2(o.NoisePct), o.PlainRuns, o.TorporRuns)
	}
	w("\n")
	b1CPUSection(w, b)
}

// b1CPUSection is where the CPU time went in the long runs' steady phases.
func b1CPUSection(w func(string, ...any), b *B1Result) {
	var read bool
	for _, c := range b.Long {
		for _, r := range c.Runs {
			read = read || r.CPU != nil
		}
	}
	if !read {
		return
	}
	w("Where the machine's CPU time went from the warm-up's end to 1 s before each run's end (every process's utime + stime, as percentages of wall time × CPUs). ")
	w("Busy and tick gap come from `/proc/stat`, which counts ticks: busy is its busy ticks over all of them, tick gap how many fewer ticks it counted than wall time × CPUs (on a VM, time the host may have taken; the processes' own times do not miss it). ")
	w("With one busy-polling rank per CPU, what any other process or the kernel takes the ranks lose. ")
	w("\"CPU lost\" = (plain − torpor) / plain of the medians of the ranks' share: the part of the overhead that is CPU time torpor's processes took; ")
	w("\"per rank-CPU-second\" = the same comparison of iterations per CPU-second the ranks got: what is left (the machine's own noise among it).\n\n")
	w("| program | MPI | run | side | busy %% | tick gap %% | ranks %% | kernel threads %% | other processes %% | largest others (%%) | it per rank-CPU-s |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range b.Long {
		for i, r := range c.Runs {
			if r.CPU == nil {
				if r.CPUErr != "" {
					w("| %s | %s | %d | %s | not read: %s ||||||\n", c.Program, c.MPI, i+1, r.Side, strings.ReplaceAll(r.CPUErr, "|", "/"))
				}
				continue
			}
			var top []string
			for _, u := range r.CPU.Others[:min(4, len(r.CPU.Others))] {
				top = append(top, fmt.Sprintf("`%s` %s", u.Comm, f2(u.Pct)))
			}
			per := "n/a"
			if r.RatePerCPU > 0 {
				per = f0(r.RatePerCPU)
			}
			w("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", c.Program, c.MPI, i+1, r.Side, f2(r.CPU.BusyPct), f2(r.CPU.TickGapPct), f2(r.CPU.RanksPct),
				f2(r.CPU.KernelPct), f2(r.CPU.OthersPct), strings.Join(top, ", "), per)
		}
	}
	w("\n| program | MPI | ranks' CPU plain %% | ranks' CPU torpor %% | **CPU lost** | it per rank-CPU-s plain | torpor | **per rank-CPU-second** |\n|---|---|---|---|---|---|---|---|\n")
	for _, c := range b.Long {
		if o := c.Overhead; o != nil && o.PlainRanksCPUPct > 0 {
			w("| %s | %s | %s | %s | **%s %%** | %s | %s | **%s %%** |\n", c.Program, c.MPI, f2(o.PlainRanksCPUPct), f2(o.TorporRanksCPUPct),
				f2(o.CPUPct), f0(o.PlainPerCPU), f0(o.TorporPerCPU), f2(o.PerCPUPct))
		}
	}
	w("\n")
}

// coordWhere says where B5's fake points kept the catalog: a run from
// before 2026-12-05 has no fresh ext4 point.
func coordWhere(ps []CoordPoint) string {
	if slices.ContainsFunc(ps, func(p CoordPoint) bool { return p.FreshExt4 }) {
		return "The catalog is in the work directory, on this machine's disk, except in two rows of the largest point. \"catalog on a fresh ext4\": on an ext4 file system with mkfs.ext4's defaults (a journal) made for the point in a file of the work directory, mounted through a loop device, so that the figure does not depend on how the work directory's file system was made or on what ran on it before (an ext4 without a journal makes every new inode skip the inodes deleted in the last minutes, one lookup each). \"catalog on tmpfs\": on a tmpfs, which leaves the coordinator's own work. The summary's coordination_ms_256 is the fresh ext4 row's. "
	}
	return "The catalog is in the work directory, on this machine's disk, except in the row \"catalog on tmpfs\": the same run with the catalog and the fake images on a tmpfs, which leaves the coordinator's own work. "
}
