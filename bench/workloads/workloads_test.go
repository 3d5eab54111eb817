// Package workloads holds the C test workloads (ring, stencil, appfiles, mpiio)
// that torpor checkpoints and restarts; this test builds them with make for Open
// MPI and MPICH and checks that their checksums, and the files appfiles and mpiio
// write, are deterministic.
package workloads

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stack is one MPI implementation: how to launch N ranks of a binary built for it.
type stack struct {
	name   string // binary suffix: bin/<prog>.<name>
	mpicc  string
	mpirun string
	flags  []string // launcher flags placed before -n
}

var stacks = []stack{
	// --allow-run-as-root: CI runs as root; --oversubscribe: 4 ranks on 2 cores.
	{name: "openmpi", mpicc: "mpicc.openmpi", mpirun: "mpirun.openmpi",
		flags: []string{"--allow-run-as-root", "--oversubscribe"}},
	{name: "mpich", mpicc: "mpicc.mpich", mpirun: "mpirun.mpich"},
}

var (
	buildOnce sync.Once
	buildErr  error
	buildOut  []byte
)

// build runs make once per test binary, or skips when an MPI toolchain is missing.
func build(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"make", "mpicc.openmpi", "mpicc.mpich", "mpirun.openmpi", "mpirun.mpich"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: install Open MPI and MPICH (scripts/deps.sh) to run the workload tests", tool)
		}
	}
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		buildOut, buildErr = exec.CommandContext(ctx, "make", "-C", ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("make workloads: %v\n%s", buildErr, buildOut)
	}
}

// result is what rank 0 printed.
type result struct {
	iters    uint64
	ranks    int
	checksum uint64
	periodic []string // "iter=N checksum=0x..." in order
	out      string
}

var (
	doneRe = regexp.MustCompile(`^(\w+): done iters=(\d+) ranks=(\d+) checksum=0x([0-9a-f]{16})$`)
	iterRe = regexp.MustCompile(`^(\w+): (iter=\d+ checksum=0x[0-9a-f]{16})$`)
)

// parse extracts the periodic and final lines of prog from the output of a run.
func parse(prog string, out []byte) (result, error) {
	r := result{out: string(out)}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := iterRe.FindStringSubmatch(line); m != nil && m[1] == prog {
			r.periodic = append(r.periodic, m[2])
			continue
		}
		m := doneRe.FindStringSubmatch(line)
		if m == nil || m[1] != prog {
			continue
		}
		if found {
			return r, fmt.Errorf("two done lines in output:\n%s", out)
		}
		found = true
		r.iters, _ = strconv.ParseUint(m[2], 10, 64)
		r.ranks, _ = strconv.Atoi(m[3])
		r.checksum, _ = strconv.ParseUint(m[4], 16, 64)
	}
	if !found {
		return r, fmt.Errorf("no '%s: done' line in output:\n%s", prog, out)
	}
	return r, nil
}

// launch runs prog on n ranks of st and returns its combined output and the exit error.
func launch(t *testing.T, st stack, n int, prog string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bin, err := filepath.Abs(filepath.Join("bin", prog+"."+st.name))
	if err != nil {
		t.Fatalf("resolve binary path: %v", err)
	}
	argv := append(append(append([]string{}, st.flags...), "-n", strconv.Itoa(n), bin), args...)
	cmd := exec.CommandContext(ctx, st.mpirun, argv...)
	cmd.Stdin = nil
	// Own process group so a timeout kills the launcher and every rank it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s timed out after 60s:\n%s", st.mpirun, strings.Join(argv, " "), out)
	}
	return out, err
}

// run launches prog and parses its result, failing the test on a non-zero exit.
func run(t *testing.T, st stack, n int, prog string, args ...string) result {
	t.Helper()
	out, err := launch(t, st, n, prog, args...)
	if err != nil {
		t.Fatalf("%s -n %d %s %v: %v\n%s", st.mpirun, n, prog, args, err, out)
	}
	r, err := parse(prog, out)
	if err != nil {
		t.Fatalf("%s -n %d %s %v: %v", st.mpirun, n, prog, args, err)
	}
	if r.ranks != n {
		t.Fatalf("%s reported ranks=%d, launched %d", prog, r.ranks, n)
	}
	return r
}

// checkRepeatable runs prog twice on n ranks of every stack, requires equal
// periodic and final checksums within each pair, and returns each stack's checksum.
func checkRepeatable(t *testing.T, n int, prog string, iters, every int, args ...string) map[string]uint64 {
	t.Helper()
	args = append([]string{"-i", strconv.Itoa(iters), "-p", strconv.Itoa(every)}, args...)
	sums := map[string]uint64{}
	for _, st := range stacks {
		a := run(t, st, n, prog, args...)
		b := run(t, st, n, prog, args...)
		if a.iters != uint64(iters) {
			t.Errorf("%s/%s: done iters=%d, want %d", prog, st.name, a.iters, iters)
		}
		if want := iters / every; len(a.periodic) != want {
			t.Errorf("%s/%s: %d periodic lines, want %d:\n%s", prog, st.name, len(a.periodic), want, a.out)
		}
		if a.checksum != b.checksum {
			t.Errorf("%s/%s -n %d: final checksums differ between two runs: %#016x vs %#016x",
				prog, st.name, n, a.checksum, b.checksum)
		}
		if strings.Join(a.periodic, "\n") != strings.Join(b.periodic, "\n") {
			t.Errorf("%s/%s -n %d: periodic checksums differ:\n%s\n---\n%s",
				prog, st.name, n, a.periodic, b.periodic)
		}
		t.Logf("%s/%s -n %d %v: checksum=%#016x", prog, st.name, n, args, a.checksum)
		sums[st.name] = a.checksum
	}
	if sums["openmpi"] != sums["mpich"] {
		t.Errorf("%s -n %d: Open MPI and MPICH disagree: %#016x vs %#016x", prog, n, sums["openmpi"], sums["mpich"])
	}
	return sums
}

func TestRingRepeatable(t *testing.T) {
	build(t)
	four := checkRepeatable(t, 4, "ring", 60, 20, "-m", "4")
	two := run(t, stacks[0], 2, "ring", "-i", "60", "-p", "20", "-m", "4")
	// The ring checksum may depend on the number of ranks; it must still be a real
	// function of the run, so 2 and 4 ranks are expected to differ.
	if two.checksum == four["openmpi"] {
		t.Errorf("ring: -n 2 and -n 4 gave the same checksum %#016x; is the ring folded in?", two.checksum)
	}
}

func TestStencilRepeatable(t *testing.T) {
	build(t)
	four := checkRepeatable(t, 4, "stencil", 40, 20, "-n", "48")
	// The stencil's result depends only on (-n, -i, -a): 2 ranks (2x1) and 4 (2x2) agree.
	for _, st := range stacks {
		two := run(t, st, 2, "stencil", "-i", "40", "-p", "20", "-n", "48")
		if two.checksum != four[st.name] {
			t.Errorf("stencil/%s: -n 2 gave %#016x, -n 4 gave %#016x; the halo exchange is wrong",
				st.name, two.checksum, four[st.name])
		}
	}
}

// TestRingMemoryFoldedIn shows that the per-rank memory feeds the checksum, so a
// page restored wrong would be noticed.
func TestRingMemoryFoldedIn(t *testing.T) {
	build(t)
	a := run(t, stacks[0], 2, "ring", "-i", "20", "-p", "0", "-m", "1")
	b := run(t, stacks[0], 2, "ring", "-i", "20", "-p", "0", "-m", "2")
	if a.checksum == b.checksum {
		t.Errorf("ring: -m 1 and -m 2 gave the same checksum %#016x", a.checksum)
	}
	// The print interval must not change the result.
	c := run(t, stacks[0], 2, "ring", "-i", "20", "-p", "3", "-m", "1")
	if a.checksum != c.checksum {
		t.Errorf("ring: -p 0 gave %#016x, -p 3 gave %#016x", a.checksum, c.checksum)
	}
}

func TestBadArgumentsExitTwo(t *testing.T) {
	build(t)
	cases := []struct {
		prog string
		args []string
		want string
	}{
		{"ring", []string{"-i", "0"}, "bad iterations"},
		{"stencil", []string{"-n", "1"}, "too small"},
		{"appfiles", []string{"-i", "5"}, "missing output directory"},
		{"appfiles", []string{"-d", "/nonexistent-torpor-dir"}, "bad output directory"},
		{"mpiio", []string{"-b", "0"}, "bad block KiB"},
	}
	for _, st := range stacks {
		for _, tc := range cases {
			t.Run(st.name+"/"+tc.prog+strings.Join(tc.args, ""), func(t *testing.T) {
				out, err := launch(t, st, 2, tc.prog, tc.args...)
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 2 {
					t.Fatalf("want exit status 2, got %v:\n%s", err, out)
				}
				if !bytes.Contains(out, []byte(tc.want)) {
					t.Errorf("output lacks %q:\n%s", tc.want, out)
				}
			})
		}
	}
}

// readDir returns the regular files directly in dir by name. appfiles and mpiio
// write flat directories, so anything else there is an error.
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	files := map[string][]byte{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			t.Fatalf("%s: %s is not a regular file (%v)", dir, e.Name(), e.Type())
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatalf("read %v", err)
		}
		files[e.Name()] = b
	}
	return files
}

// sameFiles reports how two directories read by readDir differ, or "" when they
// hold the same names with byte-identical contents.
func sameFiles(a, b map[string][]byte) string {
	var diffs []string
	for name, x := range a {
		y, ok := b[name]
		switch {
		case !ok:
			diffs = append(diffs, name+" only in the first run")
		case !bytes.Equal(x, y):
			i := 0
			for i < len(x) && i < len(y) && x[i] == y[i] {
				i++
			}
			diffs = append(diffs, fmt.Sprintf("%s differs: %d vs %d bytes, first difference at byte %d", name, len(x), len(y), i))
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			diffs = append(diffs, name+" only in the second run")
		}
	}
	return strings.Join(diffs, "; ")
}

// checkFilesRepeatable runs prog (which writes into -d DIR) twice on 2 ranks of
// every stack, each time into a fresh directory, and requires byte-identical
// directories and checksums within each stack and between the stacks. It returns
// the files of the first run.
func checkFilesRepeatable(t *testing.T, prog string, args ...string) map[string][]byte {
	t.Helper()
	var first map[string][]byte
	var firstSum uint64
	for _, st := range stacks {
		var runs [2]map[string][]byte
		var sums [2]uint64
		for i := range runs {
			dir := t.TempDir()
			r := run(t, st, 2, prog, append([]string{"-d", dir}, args...)...)
			runs[i], sums[i] = readDir(t, dir), r.checksum
		}
		if d := sameFiles(runs[0], runs[1]); d != "" {
			t.Errorf("%s/%s: two runs wrote different files: %s", prog, st.name, d)
		}
		if sums[0] != sums[1] {
			t.Errorf("%s/%s: final checksums differ between two runs: %#016x vs %#016x", prog, st.name, sums[0], sums[1])
		}
		t.Logf("%s/%s -n 2 %v: %d files, checksum=%#016x", prog, st.name, args, len(runs[0]), sums[0])
		if first == nil {
			first, firstSum = runs[0], sums[0]
			continue
		}
		if d := sameFiles(first, runs[0]); d != "" {
			t.Errorf("%s: Open MPI and MPICH wrote different files: %s", prog, d)
		}
		if firstSum != sums[0] {
			t.Errorf("%s: Open MPI and MPICH disagree: %#016x vs %#016x", prog, firstSum, sums[0])
		}
	}
	return first
}

// TestAppFilesRepeatable: the files appfiles writes (a log kept open, a table
// rewritten in place, closed step files, one log per rank) depend only on its
// parameters, so a restored run can be compared byte for byte with an undisturbed one.
func TestAppFilesRepeatable(t *testing.T) {
	build(t)
	files := checkFilesRepeatable(t, "appfiles", "-i", "40", "-k", "10", "-m", "1", "-p", "20")
	want := []string{"log.txt", "rank-0.log", "rank-1.log", "results.txt",
		"step-000010.dat", "step-000020.dat", "step-000030.dat", "step-000040.dat"}
	for _, name := range want {
		if len(files[name]) == 0 {
			t.Errorf("appfiles: %s missing or empty", name)
		}
	}
	if len(files) != len(want) {
		t.Errorf("appfiles: wrote %d files, want %d (%v)", len(files), len(want), want)
	}
	if n := bytes.Count(files["log.txt"], []byte("\n")); n != 1+40+1 {
		t.Errorf("appfiles: log.txt has %d lines, want 42 (header, one per iteration, done)", n)
	}
	if !bytes.HasPrefix(files["results.txt"], []byte("# appfiles results after iteration 40 of 40,")) ||
		!bytes.HasSuffix(files["results.txt"], []byte("\n")) {
		t.Errorf("appfiles: results.txt is not the last table:\n%s", files["results.txt"])
	}
}

// TestMPIIORepeatable: the shared file mpiio writes with MPI_File_write_at_all
// (OMPIO under Open MPI, ROMIO under MPICH) depends only on its parameters.
func TestMPIIORepeatable(t *testing.T) {
	build(t)
	files := checkFilesRepeatable(t, "mpiio", "-i", "30", "-b", "4", "-p", "10")
	if len(files) != 1 || len(files["shared.dat"]) != 30*2*4096 {
		t.Errorf("mpiio: want only shared.dat of %d bytes, got %d files, shared.dat %d bytes",
			30*2*4096, len(files), len(files["shared.dat"]))
	}
}

var (
	startRe = regexp.MustCompile(`^(\w+): t main_ns=(\d+) init_ns=(\d+)$`)
	stampRe = regexp.MustCompile(`^(\w+): t iter=(\d+) ns=(\d+)$`)
)

// TestTimedRun checks -t and -T (the benchmark's long mode, bench/harness/b1.go):
// the run lasts at least -T seconds from MPI_Init, ends at a -p boundary, prints
// one timestamp per periodic line, and its checksum is that of a run of as many
// iterations without -t and -T.
func TestTimedRun(t *testing.T) {
	build(t)
	for _, st := range stacks {
		for _, prog := range []string{"ring", "stencil"} {
			t.Run(prog+"/"+st.name, func(t *testing.T) {
				before := time.Now().UnixNano()
				every := 20
				timed := run(t, st, 2, prog, "-i", "1000000", "-p", strconv.Itoa(every), "-t", "-T", "1")
				if timed.iters == 0 || timed.iters%uint64(every) != 0 {
					t.Fatalf("done iters=%d: want a multiple of -p %d", timed.iters, every)
				}
				var mainNs, initNs, last int64
				stamps := 0
				for _, line := range strings.Split(timed.out, "\n") {
					line = strings.TrimSpace(line)
					if m := startRe.FindStringSubmatch(line); m != nil && m[1] == prog {
						mainNs, _ = strconv.ParseInt(m[2], 10, 64)
						initNs, _ = strconv.ParseInt(m[3], 10, 64)
					}
					if m := stampRe.FindStringSubmatch(line); m != nil && m[1] == prog {
						stamps++
						ns, _ := strconv.ParseInt(m[3], 10, 64)
						if ns < last {
							t.Errorf("timestamps go back: %d after %d", ns, last)
						}
						last = ns
					}
				}
				if !(before <= mainNs && mainNs <= initNs && initNs <= last) {
					t.Errorf("launch %d, main_ns %d, init_ns %d, last stamp %d: want them in this order\n%s", before, mainNs, initNs, last, timed.out)
				}
				if last-initNs < int64(time.Second) {
					t.Errorf("-T 1 ended %v after MPI_Init", time.Duration(last-initNs))
				}
				if stamps != len(timed.periodic) {
					t.Errorf("%d timestamps for %d periodic lines", stamps, len(timed.periodic))
				}
				plain := run(t, st, 2, prog, "-i", strconv.FormatUint(timed.iters, 10), "-p", strconv.Itoa(every))
				if plain.checksum != timed.checksum || strings.Join(plain.periodic, "\n") != strings.Join(timed.periodic, "\n") {
					t.Errorf("-t -T run of %d iterations: checksum %#016x, plain run %#016x", timed.iters, timed.checksum, plain.checksum)
				}
			})
		}
	}
}
