package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/coordinator"
)

// MigratePoint is B4 for one memory size and one mode: a 2-job-node job
// whose n0 moves back and forth between h1 and the spare host.
type MigratePoint struct {
	MiB int `json:"mib_per_node"`
	// Mode is how every migration of the row ran: "stop-copy" or
	// "post-copy" (coordinator.ModeStopCopy, ModePostCopy).
	Mode     string          `json:"mode"`
	Samples  []MigrateSample `json:"samples"`
	Downtime Stat            `json:"downtime"`
	// LastPage is, for post-copy, the time from the first freeze until the
	// destination had every page.
	LastPage Stat            `json:"last_page"`
	Phases   map[string]Stat `json:"phases"`
	TCP      Stat            `json:"unlock_to_tcp"`
	Bytes    int64           `json:"bytes"`
	Memory   int64           `json:"memory_bytes"`
	Err      string          `json:"error,omitempty"`
}

// b4Modes are B4's rows for each size, each forced on every migration.
var b4Modes = []struct {
	mode coordinator.PostCopy
	name string
}{{coordinator.PostCopyNever, coordinator.ModeStopCopy}, {coordinator.PostCopyAlways, coordinator.ModePostCopy}}

// runMigratePoints measures B4 at one size, both modes, on one job.
func runMigratePoints(ctx context.Context, e *Env, mib, reps int, spare string, logf func(string, ...any)) []MigratePoint {
	var modes []string
	for _, m := range b4Modes {
		modes = append(modes, m.name)
	}
	out, j := startMigrateJob(ctx, e, "b4", mib, modes)
	if j == nil {
		return out
	}
	defer j.Stop(context.WithoutCancel(ctx))
	to, moves := []string{spare, "h1"}, 0
	for i, m := range b4Modes {
		p := &out[i]
		for r := 0; r < reps; r++ {
			host := to[moves%2]
			s, err := j.Migrate(ctx, "n0", host, m.mode)
			if err == nil && s.Mode != m.name {
				err = fmt.Errorf("asked for %s, the coordinator migrated with %s", m.name, s.Mode)
			}
			if err != nil {
				p.Err = fmt.Sprintf("%s migration %d: %v", m.name, r, err)
				break
			}
			moves++
			logf("B4 %d MiB %s: migration to %s, downtime %v, last page %v, unlock→tcp %v", mib, m.name, host,
				s.Downtime.Round(time.Millisecond), s.LastPage.Round(time.Millisecond), s.Progress.TCP.Round(time.Millisecond))
			p.Samples = append(p.Samples, s)
		}
		p.summarise()
	}
	return out
}

// startMigrateJob starts the ring of B4 and B8 (2 job-nodes on h1 and h2,
// mib MiB each) and returns one point per mode, all failed, and no job if
// it cannot.
func startMigrateJob(ctx context.Context, e *Env, bench string, mib int, modes []string) ([]MigratePoint, *Job) {
	var out []MigratePoint
	for _, m := range modes {
		out = append(out, MigratePoint{MiB: mib, Mode: m, Phases: map[string]Stat{}})
	}
	j, err := e.StartJob(ctx, fmt.Sprintf("%s-%dm", bench, mib), []string{"h1", "h2"}, Workload{MiB: mib, Ring: true, ReadRate: "4M"})
	if err != nil {
		for i := range out {
			out[i].Err = err.Error()
		}
		return out, nil
	}
	time.Sleep(300 * time.Millisecond)
	return out, j
}

// b8Modes are B8's rows for each size: stop-copy migrations whose images go
// through the checkpoint directory, then from shim to shim.
var b8Modes = []struct {
	streamed bool
	name     string
}{{false, "stop-copy, checkpoint directory"}, {true, "stop-copy, streamed"}}

// runStreamPoints measures B8 at one size on a routed Env (hosts joined
// only by the shims' VXLAN overlay): n0 of a 2-job-node ring moves between
// h1 and the spare host, with its images in the checkpoint directory (as
// B4, but over the overlay) and streamed from shim to shim, in turns.
func runStreamPoints(ctx context.Context, e *Env, mib, reps int, spare string, logf func(string, ...any)) []MigratePoint {
	var modes []string
	for _, m := range b8Modes {
		modes = append(modes, m.name)
	}
	out, j := startMigrateJob(ctx, e, "b8", mib, modes)
	if j == nil {
		return out
	}
	defer j.Stop(context.WithoutCancel(ctx))
	defer e.Streamed.Store(false)
	// The modes take turns, each round in the other order: a machine
	// that slows down for a while (a VM's neighbours) slows both alike,
	// and each mode moves the job-node both ways.
	to, moves := []string{spare, "h1"}, 0
	for r := 0; r < reps; r++ {
		for k := range b8Modes {
			i := k
			if r%2 == 1 {
				i = len(b8Modes) - 1 - k
			}
			m, p := b8Modes[i], &out[i]
			if p.Err != "" {
				continue
			}
			e.Streamed.Store(m.streamed)
			host := to[moves%2]
			s, err := j.Migrate(ctx, "n0", host, coordinator.PostCopyNever)
			if err == nil && s.Streamed != m.streamed {
				err = fmt.Errorf("asked for streamed=%v, the coordinator migrated with streamed=%v", m.streamed, s.Streamed)
			}
			if err != nil {
				p.Err = fmt.Sprintf("%s migration %d: %v", m.name, r, err)
				continue
			}
			moves++
			logf("B8 %d MiB %s: migration to %s, downtime %v, unlock→tcp %v", mib, m.name, host,
				s.Downtime.Round(time.Millisecond), s.Progress.TCP.Round(time.Millisecond))
			p.Samples = append(p.Samples, s)
		}
	}
	for i := range b8Modes {
		out[i].summarise()
	}
	return out
}

func (p *MigratePoint) summarise() {
	var dt, lp, tcp []time.Duration
	ph := phaseDurations{}
	for _, s := range p.Samples {
		dt, tcp = append(dt, s.Downtime), append(tcp, s.Progress.TCP)
		if s.LastPage > 0 {
			lp = append(lp, s.LastPage)
		}
		p.Bytes, p.Memory = s.Bytes, s.Memory
		ph.add(s.Phases)
	}
	p.Downtime, p.TCP, p.LastPage = DurStat(dt), DurStat(tcp), DurStat(lp)
	ph.statsInto(p.Phases)
}

// CoordPoint is B5 for one number of job-nodes: coordination overhead, the
// checkpoint's wall time minus the time spent inside CRIU.
type CoordPoint struct {
	Nodes int  `json:"nodes"`
	Fake  bool `json:"fake_criu"`
	// Tmpfs: the fake point's catalog (and the fake shims' images) were on
	// a tmpfs, not in the work directory: coordination without the disk.
	Tmpfs bool `json:"catalog_tmpfs,omitempty"`
	// FreshExt4: the fake point's catalog was on an ext4 file system made
	// for the point (runCoordFakeExt4), not in the work directory.
	FreshExt4 bool `json:"catalog_fresh_ext4,omitempty"`
	// CatalogFS is the fake point's catalog's file system (describeFS).
	CatalogFS string       `json:"catalog_fs,omitempty"`
	Samples   []CkptSample `json:"samples"`
	Wall      Stat         `json:"wall"`
	CRIUSum   Stat         `json:"criu_sum"`
	Overhead  Stat         `json:"overhead"` // wall - sum of CRIU times (dumps serialize on one machine)
	Frozen    Stat         `json:"frozen"`   // first freeze to last thaw
	Err       string       `json:"error,omitempty"`
}

func (p *CoordPoint) summarise() {
	var w, c, o, f []time.Duration
	for _, s := range p.Samples {
		w, c, o, f = append(w, s.Wall), append(c, s.CRIUSum), append(o, s.Wall-s.CRIUSum), append(f, s.Frozen)
	}
	p.Wall, p.CRIUSum, p.Overhead, p.Frozen = DurStat(w), DurStat(c), DurStat(o), DurStat(f)
}

// runCoordReal checkpoints a job of n tiny job-nodes spread over the hosts.
func runCoordReal(ctx context.Context, e *Env, n, hosts, reps int, logf func(string, ...any)) (p CoordPoint) {
	p = CoordPoint{Nodes: n}
	hs := make([]string, n)
	for i := range hs {
		hs[i] = fmt.Sprintf("h%d", i%hosts+1)
	}
	j, err := e.StartJob(ctx, fmt.Sprintf("b5-%dn", n), hs, Workload{MiB: 1, Ring: n > 1, ReadRate: "256k", SendRate: "512k"})
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer j.Stop(context.WithoutCancel(ctx))
	for r := 0; r < reps; r++ {
		s, _, err := j.Checkpoint(ctx, false)
		if err != nil {
			p.Err = fmt.Sprintf("checkpoint %d: %v", r, err)
			return p
		}
		logf("B5 %d job-nodes: checkpoint %v, CRIU sum %v", n, s.Wall.Round(time.Millisecond), s.CRIUSum.Round(time.Millisecond))
		p.Samples = append(p.Samples, s)
	}
	p.summarise()
	return p
}

// runCoordFake checkpoints a job of n job-nodes on fake shims (no CRIU,
// no processes) through the real coordinator and on-disk catalog.
func runCoordFake(ctx context.Context, dir string, n, hosts, reps int) (p CoordPoint) {
	p = CoordPoint{Nodes: n, Fake: true}
	rec := &Recorder{}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		p.Err = err.Error()
		return p
	}
	p.CatalogFS = describeFS(dir)
	agents := map[string]agentapi.Agent{}
	for i := 1; i <= hosts; i++ {
		agents[fmt.Sprintf("f%d", i)] = rec.Wrap(fmt.Sprintf("f%d", i), newFakeAgent())
	}
	d := filepath.Join(dir, fmt.Sprintf("fake-%d", n))
	key, err := catalog.LoadOrCreateKey(filepath.Join(d, "state", "catalog.key"))
	if err != nil {
		p.Err = err.Error()
		return p
	}
	st, err := catalog.Open(filepath.Join(d, "ckpt"), key)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	c, err := coordinator.New(coordinator.Options{StateDir: filepath.Join(d, "state"), Store: coordinator.CatalogStore{S: st}, Agents: agents, Keep: 1})
	if err != nil {
		p.Err = err.Error()
		return p
	}
	// The last checkpoint's prune removes files in the background: done
	// before the point returns, so that it neither runs into the next
	// point nor keeps a file system that is about to be unmounted busy.
	defer c.WaitBackground()
	spec := coordinator.JobSpec{ID: "fake"}
	for i := 0; i < n; i++ {
		spec.Nodes = append(spec.Nodes, agentapi.NodeSpec{Name: fmt.Sprintf("n%d", i), Host: fmt.Sprintf("f%d", i%hosts+1),
			IP: fmt.Sprintf("198.19.%d.%d/15", (i+1)/250, (i+1)%250+1), Hostname: fmt.Sprintf("fake-n%d", i), Argv: []string{"/bin/true"}})
	}
	if err := c.Start(ctx, spec); err != nil {
		p.Err = err.Error()
		return p
	}
	for r := 0; r < reps; r++ {
		// Settled as every other sample (Env.settle): the pruned
		// checkpoint's files are removed in the background, which
		// checkpoints minutes apart find long done; and the checkpoint's
		// fsyncs would otherwise also write back whatever the benchmark
		// wrote before it (the real B5 points' images).
		c.WaitBackground()
		unix.Sync()
		mark := rec.Mark()
		start := time.Now()
		_, err := c.Checkpoint(ctx, "fake", coordinator.CheckpointOptions{})
		wall := time.Since(start)
		if err != nil {
			p.Err = err.Error()
			return p
		}
		p.Samples = append(p.Samples, sampleOf(rec.Since(mark), start, wall, false))
	}
	p.summarise()
	return p
}

// runCoordFakeTmpfs is runCoordFake with the catalog on a tmpfs (/dev/shm):
// the disk's metadata latency, which on a VM's disk varies several-fold
// from one minute to the next, left out.
func runCoordFakeTmpfs(ctx context.Context, n, hosts, reps int) CoordPoint {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return CoordPoint{Nodes: n, Fake: true, Tmpfs: true, Err: "no tmpfs at /dev/shm"}
	}
	dir, err := os.MkdirTemp("/dev/shm", "torpor-bench-b5-")
	if err != nil {
		return CoordPoint{Nodes: n, Fake: true, Tmpfs: true, Err: err.Error()}
	}
	defer os.RemoveAll(dir)
	p := runCoordFake(ctx, dir, n, hosts, reps)
	p.Tmpfs = true
	return p
}

// runCoordFakeExt4 is runCoordFake with the catalog on an ext4 file system
// made for the point with mkfs.ext4's defaults (a journal), in a file in
// work mounted through a loop device: its writes and fsyncs still reach
// the work directory's disk. The work directory's own file system is
// whatever the machine has; this VM's root is an ext4 without a journal,
// where every new inode skips each free inode of its group deleted in the
// last 60 s (300 s while that inode's table block is dirty) at one
// page-cache lookup each (fs/ext4/ialloc.c, find_inode_bit and
// recently_deleted, only without a journal). After the checkpoints pruned
// before it, a 256-job-node fake checkpoint there spent 42 % of its CPU
// samples in recently_deleted (perf record -g, 2026-12-05).
func runCoordFakeExt4(ctx context.Context, work string, n, hosts, reps int) CoordPoint {
	p := CoordPoint{Nodes: n, Fake: true, FreshExt4: true}
	mnt, done, err := freshExt4(ctx, work)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	p = runCoordFake(ctx, mnt, n, hosts, reps)
	p.FreshExt4 = true
	if err := done(); err != nil && p.Err == "" {
		p.Err = err.Error()
	}
	return p
}

// freshExt4 makes a 1 GiB ext4 file system (sparse) in a new directory in
// work and mounts it; done (which may be called again) unmounts it, which
// frees its loop device, and removes the directory. The inode tables and the journal are written by
// mkfs, not by the kernel in the background while the point runs.
func freshExt4(ctx context.Context, work string) (mnt string, done func() error, err error) {
	dir, err := os.MkdirTemp(work, "b5-ext4-")
	if err != nil {
		return "", nil, err
	}
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	mounted := false
	done = func() error {
		var err error
		if mounted {
			if out, uerr := exec.CommandContext(context.WithoutCancel(ctx), "umount", mnt).CombinedOutput(); uerr != nil {
				err = fmt.Errorf("umount %s: %v: %s", mnt, uerr, bytes.TrimSpace(out))
			} else {
				mounted = false
			}
		}
		if err == nil {
			err = os.RemoveAll(dir)
		}
		return err
	}
	steps := [][]string{
		{"truncate", "-s", "1G", img},
		{"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img},
		{"mount", "-o", "loop", img, mnt},
	}
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return "", nil, errors.Join(err, done())
	}
	for _, argv := range steps {
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return "", nil, errors.Join(fmt.Errorf("%s: %v: %s (the fresh ext4 point needs e2fsprogs and loop devices)", strings.Join(argv, " "), err, bytes.TrimSpace(out)), done())
		}
	}
	mounted = true
	return mnt, done, nil
}

// describeFS names dir's file system for the report: "tmpfs", "ext4 with a
// journal", "ext4 without a journal" (from /sys/fs/ext4/<device>/journal_task),
// or the magic number of any other.
func describeFS(dir string) string {
	var sf unix.Statfs_t
	if err := unix.Statfs(dir, &sf); err != nil {
		return ""
	}
	switch sf.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return "ext4"
		}
		dev, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)))
		if err != nil {
			return "ext4"
		}
		task, err := os.ReadFile(filepath.Join("/sys/fs/ext4", filepath.Base(dev), "journal_task"))
		switch {
		case err != nil:
			return "ext4"
		case strings.TrimSpace(string(task)) == "<none>":
			return "ext4 without a journal"
		default:
			return "ext4 with a journal"
		}
	default:
		return fmt.Sprintf("file system 0x%x", sf.Type)
	}
}
