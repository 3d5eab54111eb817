package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
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
}

// B1Result is the runtime overhead benchmark.
type B1Result struct {
	// TorporSide says whether `torpor run` could be measured, and why not.
	TorporSide string   `json:"torpor_side"`
	Cases      []B1Case `json:"cases"`
}

var (
	doneRE    = regexp.MustCompile(`: done .*checksum=(0x[0-9a-f]+)`)
	startedRE = regexp.MustCompile(`torpor: job (\S+) started on `)
)

// mpiRun runs argv (an mpirun or torpor run command line) and returns its
// wall time and the checksum the program printed.
func mpiRun(ctx context.Context, argv []string) (time.Duration, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// SIGTERM first: `torpor run` then stops its embedded coordinator
	// cleanly; its job runs on, and is cancelled below.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if err != nil {
		if m := startedRE.FindSubmatch(out); m != nil && len(argv) > 1 && argv[1] == "run" {
			// A job that outlives its `torpor run` (interrupted, or
			// hung) keeps running: end it, or the next run adopts it.
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			_ = exec.CommandContext(cctx, argv[0], "cancel", string(m[1])).Run()
			ccancel()
		}
		return wall, "", fmt.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, tail(out))
	}
	m := doneRE.FindSubmatch(out)
	if m == nil {
		return wall, "", fmt.Errorf("%s: no done line\n%s", strings.Join(argv, " "), tail(out))
	}
	return wall, string(m[1]), nil
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

// runB1 runs ring and stencil on both MPI libraries, reps times each,
// alternating plain and torpor runs when torpor can run MPI jobs.
func runB1(ctx context.Context, repo string, reps int, full bool, logf func(string, ...any)) B1Result {
	torpor := filepath.Join(repo, "bin", "torpor")
	ok, why := torporRunSupported(ctx, torpor)
	res := B1Result{TorporSide: why}
	iters := "300"
	if full {
		iters = "1500"
	}
	progs := []struct {
		name string
		args []string
	}{
		{"ring", []string{"-i", iters, "-m", "16", "-p", iters}},
		{"stencil", []string{"-n", "512", "-i", iters, "-p", iters}},
	}
	mpis := []struct {
		name   string
		mpirun []string
	}{
		{"openmpi", []string{"mpirun.openmpi", "--allow-run-as-root", "--oversubscribe"}},
		{"mpich", []string{"mpirun.mpich"}},
	}
	const ranks = 4
	for _, pr := range progs {
		for _, m := range mpis {
			c := B1Case{Program: pr.name, MPI: m.name, Ranks: ranks, Args: pr.args}
			bin := filepath.Join(repo, "bench", "workloads", "bin", pr.name+"."+m.name)
			if _, err := os.Stat(bin); err != nil {
				c.Err = fmt.Sprintf("%s missing: run `make workloads`", bin)
				res.Cases = append(res.Cases, c)
				continue
			}
			plainArgv := append(append(append([]string{}, m.mpirun...), "-n", fmt.Sprint(ranks), bin), pr.args...)
			torporArgv := append([]string{torpor, "run", "--allow-run-as-root", "--oversubscribe", "--mpi", m.name, "-n", fmt.Sprint(ranks), bin}, pr.args...)
			var plain, tor []time.Duration
			for r := 0; r < reps && c.Err == ""; r++ {
				// Alternate which side goes first, so drift hits both alike.
				order := []bool{false, true}
				if r%2 == 1 {
					order = []bool{true, false}
				}
				for _, underTorpor := range order {
					if underTorpor && (!ok || c.TorpErr != "") {
						continue
					}
					argv := plainArgv
					if underTorpor {
						argv = torporArgv
					}
					d, sum, err := mpiRun(ctx, argv)
					if err != nil && underTorpor {
						// The torpor side failed: report why, keep measuring plain mpirun.
						c.TorpErr = err.Error()
						continue
					}
					if err != nil {
						c.Err = err.Error()
						break
					}
					if c.Checksum != "" && sum != c.Checksum {
						c.Err = fmt.Sprintf("checksum changed: %s then %s", c.Checksum, sum)
						break
					}
					c.Checksum = sum
					if underTorpor {
						tor = append(tor, d)
					} else {
						plain = append(plain, d)
					}
				}
			}
			c.Plain = DurStat(plain)
			if len(tor) > 0 {
				s := DurStat(tor)
				c.Torpor = &s
			}
			logf("B1 %s/%s: plain median %.0f ms over %d runs %s%s", pr.name, m.name, c.Plain.Median, c.Plain.N, c.Err, firstLine(c.TorpErr))
			res.Cases = append(res.Cases, c)
		}
	}
	res.TorporSide = torporSide(res)
	return res
}

// torporSide says honestly what happened on the torpor side.
func torporSide(res B1Result) string {
	measured, why := false, ""
	for _, c := range res.Cases {
		measured = measured || c.Torpor != nil
		if c.TorpErr != "" && why == "" {
			l := strings.Split(strings.TrimSpace(c.TorpErr), "\n")
			why = l[len(l)-1]
		}
	}
	if !measured && why != "" {
		return "not available yet: `torpor run` failed: " + why
	}
	return res.TorporSide
}
