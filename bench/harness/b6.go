package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/shim/appfiles"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/simhost"
	"golang.org/x/sys/unix"
)

// B6 hosts: the agent of b6Plain captures no application files
// (agent.Config.NoAppFiles); b6Capture's does, as every shim does.
const (
	b6Capture = "h1"
	b6Plain   = "h2"
)

// AppFilesResult is B6: what capturing the application's files costs a
// checkpoint. Two jobs of one job-node each run applog (a log it holds open,
// LogMiB at the start, GrowMiB appended before every checkpoint), one on a
// host whose shim captures the application's files and one on a host whose
// shim does not; their checkpoints alternate.
type AppFilesResult struct {
	LogMiB  int `json:"log_mib"`
	GrowMiB int `json:"grow_mib"`
	// KeepMax is the job-nodes' --keep-max: the first capture copies the
	// whole log, more than the default limit allows in the full run.
	KeepMax int64          `json:"keep_max"`
	With    AppFilesSeries `json:"with_capture"`
	Without AppFilesSeries `json:"without_capture"`
	Err     string         `json:"error,omitempty"`
}

// AppFilesSeries is one job's checkpoints: the first one (the first capture
// copies the log whole) and the steady ones (each after GrowMiB more).
type AppFilesSeries struct {
	Host         string       `json:"host"`
	Capture      bool         `json:"capture"`
	First        CkptSample   `json:"first"`
	FirstCapture AppCapture   `json:"first_capture"`
	Steady       []CkptSample `json:"steady"`
	Captures     []AppCapture `json:"steady_captures"`
	Wall         Stat         `json:"steady_wall"`
	Dump         Stat         `json:"steady_dump"` // the dump phase: capture + CRIU + output copy + manifest
	CRIU         Stat         `json:"steady_criu"`
}

// AppCapture is what a checkpoint's images say was captured (index.json).
type AppCapture struct {
	Files   int    `json:"files"`
	Bytes   int64  `json:"bytes_copied"`
	LogKind string `json:"log_kind,omitempty"` // "content", "length", or "" (not captured)
	LogSize int64  `json:"log_size"`
}

func (s *AppFilesSeries) summarise() {
	var w, d, c []time.Duration
	for _, x := range s.Steady {
		w, d, c = append(w, x.Wall), append(d, x.Phases["dump"]), append(c, x.CRIUSum)
	}
	s.Wall, s.Dump, s.CRIU = DurStat(w), DurStat(d), DurStat(c)
}

// appJob is one B6 job: its Job, the log, and applog's PID on the machine.
type appJob struct {
	*Job
	series *AppFilesSeries
	log    string
	pid    int
	mib    int // what the log holds
}

// runAppFiles measures B6 in e, which has hosts b6Capture and b6Plain.
func runAppFiles(ctx context.Context, e *Env, logMiB, growMiB, reps int, logf func(string, ...any)) (p AppFilesResult) {
	p = AppFilesResult{LogMiB: logMiB, GrowMiB: growMiB, KeepMax: 2 * int64(logMiB) << 20,
		With: AppFilesSeries{Host: b6Capture, Capture: true}, Without: AppFilesSeries{Host: b6Plain}}
	var jobs []*appJob
	defer func() {
		for _, j := range jobs {
			j.Stop(context.WithoutCancel(ctx))
		}
	}()
	for i, s := range []*AppFilesSeries{&p.With, &p.Without} {
		id := "b6-capture"
		if !s.Capture {
			id = "b6-plain"
		}
		j, err := e.startAppJob(ctx, id, s.Host, i+1, logMiB, growMiB, p.KeepMax)
		if err != nil {
			p.Err = err.Error()
			return p
		}
		j.series = s
		jobs = append(jobs, j)
	}
	for _, j := range jobs {
		cs, c, err := j.checkpoint(ctx)
		if err != nil {
			p.Err = fmt.Sprintf("%s: first checkpoint: %v", j.ID, err)
			return p
		}
		j.series.First, j.series.FirstCapture = cs, c
		logf("B6 %s: first checkpoint %v (log %d MiB, %s MiB copied)", j.ID, cs.Wall.Round(time.Millisecond), logMiB, mib(c.Bytes))
	}
	for r := 0; r < reps; r++ {
		order := jobs
		if r%2 == 1 { // alternate which goes first
			order = []*appJob{jobs[1], jobs[0]}
		}
		for _, j := range order {
			if err := j.grow(ctx, growMiB); err != nil {
				p.Err = fmt.Sprintf("%s: append %d: %v", j.ID, r, err)
				return p
			}
			cs, c, err := j.checkpoint(ctx)
			if err != nil {
				p.Err = fmt.Sprintf("%s: checkpoint %d: %v", j.ID, r, err)
				return p
			}
			j.series.Steady = append(j.series.Steady, cs)
			j.series.Captures = append(j.series.Captures, c)
			logf("B6 %s: checkpoint %v after +%d MiB (log %d MiB, %s MiB copied)", j.ID, cs.Wall.Round(time.Millisecond), growMiB, j.mib, mib(c.Bytes))
		}
	}
	p.With.summarise()
	p.Without.summarise()
	return p
}

// startAppJob starts job id: one job-node on host running applog, with the
// log below e.Dir (not below the shims' run directory, which a capture
// leaves out).
func (e *Env) startAppJob(ctx context.Context, id, host string, addr, logMiB, growMiB int, keepMax int64) (*appJob, error) {
	status := filepath.Join(e.Dir, "status", id)
	logDir := filepath.Join(e.Dir, "applog", id)
	for _, d := range []string{status, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	log := filepath.Join(logDir, "app.log")
	f := nodeFiles{Mem: filepath.Join(status, "n0.log-status")}
	n := agentapi.NodeSpec{
		Name: "n0", Host: host, IP: simhost.NodeAddr(addr), Hostname: id + "-n0", KeepMax: keepMax,
		Argv: []string{e.Bins.AppLog, "-log", log, "-size", strconv.Itoa(logMiB), "-grow", strconv.Itoa(growMiB), "-status", f.Mem},
	}
	j, err := e.startJob(ctx, &Job{e: e, ID: id, Spec: coordinator.JobSpec{ID: id, Nodes: []agentapi.NodeSpec{n}}, Files: []nodeFiles{f}})
	if err != nil {
		return nil, err
	}
	aj := &appJob{Job: j, log: log, mib: logMiB}
	if aj.pid, err = aj.findPid(); err != nil {
		j.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return aj, nil
}

// findPid is applog's PID on the machine, found in its job-node's cgroup.
func (j *appJob) findPid() (int, error) {
	mount, err := cgroup.Mountpoint()
	if err != nil {
		return 0, err
	}
	dir := j.nodeCgroup(mount, j.Spec.Nodes[0])
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return 0, fmt.Errorf("list processes of %s: %w", dir, err)
	}
	for _, s := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(s)
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "applog" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no applog process in %s", dir)
}

// grow has applog append mib MiB and waits until its status says it did.
func (j *appJob) grow(ctx context.Context, mib int) error {
	if err := unix.Kill(j.pid, unix.SIGUSR1); err != nil {
		return fmt.Errorf("signal applog (pid %d): %w", j.pid, err)
	}
	want := uint64(j.mib + mib)
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := readCounter(j.Files[0].Mem)
		if err != nil && !errors.Is(err, errNotYet) {
			return err
		}
		if n >= want {
			j.mib = int(n)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("applog did not append within 30s (log %d MiB, want %d)", n, want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// checkpoint takes a leave-running checkpoint and reads, from its images,
// what was captured; it checks that the capture is what B6 means to measure:
// nothing at all without capture; with it, the log whole the first time and
// by its length afterwards.
func (j *appJob) checkpoint(ctx context.Context) (CkptSample, AppCapture, error) {
	cs, h, err := j.Checkpoint(ctx, false)
	if err != nil {
		return cs, AppCapture{}, err
	}
	cp, err := j.e.Store.Get(h)
	if err != nil {
		return cs, AppCapture{}, err
	}
	images := cp.NodeDir("n0")
	ix, err := appfiles.ReadIndex(images)
	if err != nil {
		return cs, AppCapture{}, err
	}
	c := AppCapture{Files: len(ix.Entries), Bytes: ix.Bytes}
	for _, e := range ix.Entries {
		if e.Path == j.log {
			c.LogKind, c.LogSize = string(e.Kind), e.Size
		}
	}
	size := int64(j.mib) << 20
	first := len(j.series.Steady) == 0 && j.series.First.Wall == 0
	switch {
	case !j.series.Capture:
		if _, err := os.Stat(filepath.Join(images, appfiles.DirName)); !errors.Is(err, os.ErrNotExist) {
			return cs, c, fmt.Errorf("the shim without capture wrote %s into %s (%v)", appfiles.DirName, images, err)
		}
	case c.LogSize != size:
		return cs, c, fmt.Errorf("checkpoint %s captured the log at %d bytes (%q), want %d", h, c.LogSize, c.LogKind, size)
	case first && c.LogKind != string(appfiles.KindContent):
		return cs, c, fmt.Errorf("first checkpoint %s captured the log as %q, want it whole", h, c.LogKind)
	case !first && c.LogKind != string(appfiles.KindLength):
		return cs, c, fmt.Errorf("checkpoint %s captured the grown log as %q, want by its length", h, c.LogKind)
	}
	return cs, c, nil
}
