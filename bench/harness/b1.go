package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// B1Case is one MPI program on one MPI library, plain mpirun beside torpor run.
type B1Case struct {
	Program  string   `json:"program"`
	MPI      string   `json:"mpi"`
	Ranks    int      `json:"ranks"`
	Args     []string `json:"args"`
	Plain    Stat     `json:"plain"`
	Torpor   *Stat    `json:"torpor,omitempty"`
	TorpErr  string   `json:"torpor_error,omitempty"`
	Checksum string   `json:"checksum"`
	Err      string   `json:"error,omitempty"`
	// The start-up and teardown of the same runs (absent in runs before -t).
	PlainStart  *B1Startup `json:"plain_startup,omitempty"`
	TorporStart *B1Startup `json:"torpor_startup,omitempty"`
}

// B1Startup splits runs' wall time, in ms since the launcher was started:
// FirstRank until the earliest rank entered main, Init until rank 0's
// MPI_Init returned; Teardown is from the last iteration's end to the
// launcher's exit.
type B1Startup struct {
	FirstRank Stat `json:"first_rank"`
	Init      Stat `json:"mpi_init_returned"`
	Teardown  Stat `json:"teardown"`
}

func startupOf(runs []b1Run) *B1Startup {
	if len(runs) == 0 {
		return nil
	}
	var f, i, t []time.Duration
	for _, r := range runs {
		f, i, t = append(f, r.FirstRank), append(i, r.Init), append(t, r.Teardown)
	}
	return &B1Startup{FirstRank: DurStat(f), Init: DurStat(i), Teardown: DurStat(t)}
}

// B1Result is the runtime overhead benchmark.
type B1Result struct {
	// TorporSide says whether `torpor run` could be measured, and why not.
	TorporSide string   `json:"torpor_side"`
	Cases      []B1Case `json:"cases"`
	// Long is the long mode: jobs of Plan.B1LongSecs, start-up and
	// steady-state rate apart (bench/README.md, "B1 long mode").
	Long []B1LongCase `json:"long,omitempty"`
}

var (
	doneRE    = regexp.MustCompile(`: done iters=(\d+) .*checksum=(0x[0-9a-f]+)`)
	startedRE = regexp.MustCompile(`torpor: job (\S+) started on `)
	iterRE    = regexp.MustCompile(`: iter=(\d+) checksum=(0x[0-9a-f]+)`)
	tStartRE  = regexp.MustCompile(`: t main_ns=(\d+) init_ns=(\d+)`)
	tIterRE   = regexp.MustCompile(`: t iter=(\d+) ns=(\d+)`)
)

// finalizeWait is how long a launcher may take to exit after the program
// printed its done line; longer is the MPICH 4.0.2 finalize hang (README,
// "Status"), and the job is cancelled.
const finalizeWait = 30 * time.Second

// launcher is how B1 starts a program: plain mpirun, or `torpor run` with
// the bench's own state directory and socket (env), so that it neither
// joins nor disturbs a coordinator another torpor process hosts.
type launcher struct {
	argv   []string
	env    []string // added to the environment
	torpor string   // bin/torpor for `torpor cancel`, when argv is `torpor run`
	// cpu, when set, asks for where the machine's CPU time went between
	// from and to after rank 0's MPI_Init returned (b1Run.CPU).
	cpu *cpuPhase
}

// cpuPhase is a run's phase whose CPU time is read: processes named rank
// are the ranks.
type cpuPhase struct {
	from, to time.Duration
	rank     string
}

// progressPoint is an iteration and when it ended, since the launch.
type progressPoint struct {
	Iter uint64
	At   time.Duration
}

// b1Run is one launch of an MPI program (ring or stencil with -t), timed
// from the outside (the launch, the launcher's exit) and from the inside
// (the program's CLOCK_REALTIME stamps, comparable with this process's
// time.Now: one machine, one clock).
type b1Run struct {
	Wall      time.Duration // launch → the launcher exited (or was ended)
	FirstRank time.Duration // launch → the earliest rank entered main
	Init      time.Duration // launch → rank 0's MPI_Init returned
	Teardown  time.Duration // the last iteration's stamp → the launcher exited
	Iters     uint64        // of the done line
	Checksum  string        // of the done line
	Sums      map[uint64]string
	Progress  []progressPoint
	// Hung: the program printed its done line but the launcher did not exit
	// within finalizeWait; it was ended (and a torpor job cancelled). The
	// measurements up to the done line stand.
	Hung bool
	// CPU is where the machine's CPU time went in launcher.cpu's phase;
	// nil if not asked for, or the run ended before the phase did.
	CPU    *B1CPU
	CPUErr string
}

// mpiRun launches l, reads its output as it comes and returns the run's
// timings. A launcher that outlives its program's done line by finalizeWait,
// or runs past timeout, is ended (a torpor job is cancelled by its id).
func mpiRun(ctx context.Context, l launcher, timeout time.Duration) (b1Run, error) {
	var r b1Run
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		return r, err
	}
	defer pr.Close()
	cmd := exec.Command(l.argv[0], l.argv[1:]...)
	cmd.Env = append(os.Environ(), l.env...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	launch := time.Now()
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return r, fmt.Errorf("start %s: %w", strings.Join(l.argv, " "), err)
	}
	var (
		mu    sync.Mutex
		out   bytes.Buffer
		jobID string
	)
	r.Sums = map[uint64]string{}
	ended := make(chan struct{}) // closed when the launcher has exited or was ended
	cpuDone := make(chan struct{})
	if l.cpu == nil {
		close(cpuDone)
	}
	done := make(chan struct{})
	lines := make(chan struct{})
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seenDone := false
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			out.WriteString(line + "\n")
			if m := startedRE.FindStringSubmatch(line); m != nil {
				jobID = m[1]
			}
			if m := tStartRE.FindStringSubmatch(line); m != nil {
				first := r.Init == 0
				r.FirstRank, r.Init = sinceLaunch(launch, m[1]), sinceLaunch(launch, m[2])
				if first && l.cpu != nil {
					go readCPU(*l.cpu, launch.Add(r.Init), ended, cpuDone, func(c *B1CPU, err error) {
						mu.Lock()
						defer mu.Unlock()
						r.CPU = c
						if err != nil {
							r.CPUErr = err.Error()
						}
					})
				}
			}
			if m := tIterRE.FindStringSubmatch(line); m != nil {
				it, _ := strconv.ParseUint(m[1], 10, 64)
				r.Progress = append(r.Progress, progressPoint{it, sinceLaunch(launch, m[2])})
			}
			if m := iterRE.FindStringSubmatch(line); m != nil {
				it, _ := strconv.ParseUint(m[1], 10, 64)
				r.Sums[it] = m[2]
			}
			if m := doneRE.FindStringSubmatch(line); m != nil && !seenDone {
				r.Iters, _ = strconv.ParseUint(m[1], 10, 64)
				r.Checksum = m[2]
				seenDone = true
				close(done)
			}
			mu.Unlock()
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var waitErr, why error
	var doneC <-chan struct{} = done
	var finalize <-chan time.Time
wait:
	for {
		select {
		case waitErr = <-exited:
			break wait
		case <-doneC:
			doneC, finalize = nil, time.After(finalizeWait)
		case <-finalize:
			r.Hung = true
			why = fmt.Errorf("did not exit within %v of its done line (MPI finalize hang?); ended", finalizeWait)
		case <-ctx.Done():
			why = fmt.Errorf("ended after %v: %w", timeout, ctx.Err())
		}
		if why != nil {
			// SIGTERM first: `torpor run` then stops its embedded
			// coordinator cleanly; its job runs on and is cancelled below.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case waitErr = <-exited:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				waitErr = <-exited
			}
			break wait
		}
	}
	end := time.Now()
	close(ended)
	r.Wall = end.Sub(launch)
	mu.Lock()
	id := jobID
	mu.Unlock()
	if (why != nil || waitErr != nil) && id != "" && l.torpor != "" {
		// A job that outlives its `torpor run` (ended, or hung) keeps
		// running: end it, or the next run adopts it.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		c := exec.CommandContext(cctx, l.torpor, "cancel", id)
		c.Env = cmd.Env
		_ = c.Run()
		ccancel()
	}
	// The output ends when the last process holding the pipe is gone.
	select {
	case <-lines:
	case <-time.After(10 * time.Second):
		pr.Close()
		<-lines
	}
	if n := len(r.Progress); n > 0 {
		r.Teardown = r.Wall - r.Progress[n-1].At
	}
	if r.Init != 0 {
		<-cpuDone // returns at once once the run has ended
	}
	mu.Lock()
	defer mu.Unlock()
	text := out.Bytes()
	// The reason first: the summary shows an error's first line.
	argv := strings.Join(l.argv, " ")
	switch {
	case why != nil:
		return r, fmt.Errorf("%v (%s)\n%s", why, argv, tail(text))
	case waitErr != nil:
		return r, fmt.Errorf("%v (%s)\n%s", waitErr, argv, tail(text))
	case r.Checksum == "":
		return r, fmt.Errorf("no done line (%s)\n%s", argv, tail(text))
	}
	return r, nil
}

// sinceLaunch is a CLOCK_REALTIME stamp in ns as a duration since launch.
func sinceLaunch(launch time.Time, ns string) time.Duration {
	v, _ := strconv.ParseInt(ns, 10, 64)
	return time.Unix(0, v).Sub(launch)
}

func tail(b []byte) string {
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return string(b)
}

// torporRunSupported says whether bin/torpor run exists and says it runs MPI programs.
func torporRunSupported(ctx context.Context, torpor string) (bool, string) {
	if _, err := os.Stat(torpor); err != nil {
		return false, fmt.Sprintf("not available yet: %s not built (make build)", torpor)
	}
	out, _ := exec.CommandContext(ctx, torpor, "run", "--help").CombinedOutput()
	if !strings.Contains(string(out), "MPI") {
		return false, "not available yet: `torpor run --help` does not offer MPI support (" + strings.TrimSpace(firstLine(string(out))) + ")"
	}
	return true, "measured with `torpor run`"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// b1Setup is what every B1 run shares.
type b1Setup struct {
	repo, torpor string
	ok           bool     // torpor run can run MPI programs
	env          []string // the torpor side's TORPOR_CONFIG and TORPOR_SOCKET
	runDir       string   // the torpor side's --run-dir
	mounted      bool     // runDir is a tmpfs newB1Setup mounted
}

var mpirunArgv = map[string][]string{
	"openmpi": {"mpirun.openmpi", "--allow-run-as-root", "--oversubscribe"},
	"mpich":   {"mpirun.mpich"},
	// torpor's private MPICH 4.2 (make deps): Debian 12's 4.0.2 can hang in
	// MPI_Finalize (README, "MPICH"). Hydra 4.0.2 launches its programs.
	"mpich42": {"mpirun.mpich"},
}

// mpiFlag is torpor run's --mpi value for a workload stack.
var mpiFlag = map[string]string{
	"openmpi": "openmpi",
	"mpich":   "mpich",
	"mpich42": "mpich",
}

// launchers returns the plain and the torpor launcher of bin with args.
func (b b1Setup) launchers(prog, mpi string, ranks int, args []string) (plain, tor launcher, err error) {
	bin := filepath.Join(b.repo, "bench", "workloads", "bin", prog+"."+mpi)
	if _, err := os.Stat(bin); err != nil {
		return plain, tor, fmt.Errorf("%s missing: run `make workloads`", bin)
	}
	plain.argv = append(append(append([]string{}, mpirunArgv[mpi]...), "-n", fmt.Sprint(ranks), bin), args...)
	tor.argv = append([]string{b.torpor, "run", "--run-dir", b.runDir, "--allow-run-as-root", "--oversubscribe", "--mpi", mpiFlag[mpi], "-n", fmt.Sprint(ranks), bin}, args...)
	tor.env, tor.torpor = b.env, b.torpor
	return plain, tor, nil
}

// newB1Setup checks bin/torpor and gives the torpor side a state directory
// and socket of its own below dir, and a run directory of its own on a
// tmpfs it mounts, which close removes. Open MPI's shared memory is backed
// there (<run-dir>/jobs/<job>/<node>.shm), as plain mpirun's is in
// /dev/shm; /run, where /run/torpor is, is a tmpfs on most machines but
// ext4 on the VM of bench/results (torpor doctor warns of it). There, three
// alternating rounds of 30 s ring runs (2 ranks, -m 16) gave 284-310 k
// iterations with the run directory on ext4, 284-298 k on a tmpfs and
// 278-307 k under plain mpirun: no difference above the noise, but the
// benchmark measures the setting users have.
func newB1Setup(ctx context.Context, repo, dir string) (b1Setup, string, error) {
	b := b1Setup{repo: repo, torpor: filepath.Join(repo, "bin", "torpor"),
		runDir: fmt.Sprintf("/run/torpor-bench-%d", os.Getpid())}
	ok, why := torporRunSupported(ctx, b.torpor)
	b.ok = ok
	for _, d := range []string{dir, b.runDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return b, why, err
		}
	}
	if err := syscall.Mount("tmpfs", b.runDir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return b, why, fmt.Errorf("mount a tmpfs on %s: %w", b.runDir, err)
	}
	b.mounted = true
	conf := filepath.Join(dir, "torpor.yaml")
	yaml := fmt.Sprintf("state_dir: %s\ncheckpoint_dir: %s\n", filepath.Join(dir, "state"), filepath.Join(dir, "ckpt"))
	if err := os.WriteFile(conf, []byte(yaml), 0o644); err != nil {
		return b, why, err
	}
	b.env = []string{"TORPOR_CONFIG=" + conf, "TORPOR_SOCKET=" + filepath.Join(dir, "coordinator.sock")}
	return b, why, nil
}

// close removes the torpor side's run directory (the job-nodes' output and
// PMIx files, which `torpor run` leaves behind) and its tmpfs.
func (b b1Setup) close() {
	if b.mounted {
		_ = syscall.Unmount(b.runDir, syscall.MNT_DETACH)
	}
	_ = os.RemoveAll(b.runDir)
}

// runB1 runs ring and stencil on both MPI libraries, reps times each,
// alternating plain and torpor runs when torpor can run MPI jobs, then the
// long mode's cases. dir is scratch for the torpor side's state.
func runB1(ctx context.Context, repo, dir string, plan Plan, full bool, logf func(string, ...any)) B1Result {
	b, why, err := newB1Setup(ctx, repo, dir)
	defer b.close()
	res := B1Result{TorporSide: why}
	if err != nil {
		res.TorporSide = "not measured: " + err.Error()
		b.ok = false
	}
	iters := "300"
	if full {
		iters = "1500"
	}
	progs := []struct {
		name string
		args []string
	}{
		{"ring", []string{"-i", iters, "-m", "16", "-p", iters, "-t"}},
		{"stencil", []string{"-n", "512", "-i", iters, "-p", iters, "-t"}},
	}
	const ranks = 4
	if b.ok {
		// One untimed run of each side first: the torpor side's state
		// directory is made (keys, catalog) and both find their files in
		// the page cache.
		if plain, tor, err := b.launchers("ring", "openmpi", ranks, progs[0].args); err == nil {
			_, _ = mpiRun(ctx, plain, 2*time.Minute)
			_, _ = mpiRun(ctx, tor, 2*time.Minute)
		}
	}
	for _, pr := range progs {
		for _, mpi := range []string{"openmpi", "mpich42"} {
			c := B1Case{Program: pr.name, MPI: mpi, Ranks: ranks, Args: pr.args}
			plainL, torL, err := b.launchers(pr.name, mpi, ranks, pr.args)
			if err != nil {
				c.Err = err.Error()
				res.Cases = append(res.Cases, c)
				continue
			}
			var plain, tor []b1Run
			for r := 0; r < plan.B1Reps && c.Err == ""; r++ {
				// Alternate which side goes first, so drift hits both alike.
				for _, underTorpor := range sideOrder(r) {
					if underTorpor && (!b.ok || c.TorpErr != "") {
						continue
					}
					l := plainL
					if underTorpor {
						l = torL
					}
					run, err := mpiRun(ctx, l, 2*time.Minute)
					if err != nil && underTorpor {
						// The torpor side failed: report why, keep measuring plain mpirun.
						c.TorpErr = err.Error()
						continue
					}
					if err != nil {
						c.Err = err.Error()
						break
					}
					if c.Checksum != "" && run.Checksum != c.Checksum {
						c.Err = fmt.Sprintf("checksum changed: %s then %s", c.Checksum, run.Checksum)
						break
					}
					c.Checksum = run.Checksum
					if underTorpor {
						tor = append(tor, run)
					} else {
						plain = append(plain, run)
					}
				}
			}
			c.Plain, c.PlainStart = wallStat(plain), startupOf(plain)
			if len(tor) > 0 {
				s := wallStat(tor)
				c.Torpor, c.TorporStart = &s, startupOf(tor)
			}
			logf("B1 %s/%s: plain median %.0f ms over %d runs %s%s", pr.name, mpi, c.Plain.Median, c.Plain.N, c.Err, firstLine(c.TorpErr))
			res.Cases = append(res.Cases, c)
		}
	}
	for _, spec := range plan.B1Long {
		c := runB1Long(ctx, b, spec, plan.B1LongSecs, logf)
		res.Long = append(res.Long, c)
	}
	res.TorporSide = torporSide(res)
	return res
}

// sideOrder is the order of rep r: plain first on even reps, torpor first on
// odd ones (plain, torpor, torpor, plain, ...).
func sideOrder(r int) []bool {
	if r%2 == 1 {
		return []bool{true, false}
	}
	return []bool{false, true}
}

func wallStat(runs []b1Run) Stat {
	ds := make([]time.Duration, len(runs))
	for i, r := range runs {
		ds[i] = r.Wall
	}
	return DurStat(ds)
}

// torporSide says honestly what happened on the torpor side.
func torporSide(res B1Result) string {
	measured, why := false, ""
	for _, c := range res.Cases {
		measured = measured || c.Torpor != nil
		if c.TorpErr != "" && why == "" {
			why = firstLine(strings.TrimSpace(c.TorpErr))
		}
	}
	if !measured && why != "" {
		return "not available yet: `torpor run` failed: " + why
	}
	return res.TorporSide
}
