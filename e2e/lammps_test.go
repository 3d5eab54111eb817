package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// LAMMPS (Debian's lammps package, Open MPI build) runs the Lennard-Jones
// melt of testdata/lammps/in.melt on 4 ranks.
const (
	lammpsRanks    = 4
	lammpsSuspend  = 1000 // suspend once the thermo row of this step is out
	lammpsMinAfter = 10   // thermo rows that must come after the restore
)

// thermoRow is one row of LAMMPS's thermo output: the step and the other
// columns exactly as printed (%24.17g round-trips every double, so equal
// text is equal bits).
type thermoRow struct {
	step int
	cols []string
}

func (r thermoRow) String() string { return fmt.Sprintf("%d %s", r.step, strings.Join(r.cols, " ")) }

// thermoTable is the column header ("Step Temp PotEng ...") and every row of
// the thermo output of one run.
type thermoTable struct {
	header []string
	rows   []thermoRow
}

// parseThermo reads the thermo table of a LAMMPS run from its screen output:
// the rows between the "Step ..." header and "Loop time ...". Lines there
// that are not rows (torpor's own messages) are skipped; timing lines come
// after "Loop time" and are never read.
func parseThermo(out string) (thermoTable, error) {
	var tab thermoTable
	in := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case !in && len(f) > 1 && f[0] == "Step":
			if tab.header != nil {
				return tab, fmt.Errorf("a second thermo header: %q", line)
			}
			tab.header, in = f, true
		case in && strings.HasPrefix(line, "Loop time"):
			in = false
		case in && len(f) == len(tab.header):
			step, err := strconv.Atoi(f[0])
			if err != nil {
				continue
			}
			for _, v := range f[1:] {
				if _, err := strconv.ParseFloat(v, 64); err != nil {
					return tab, fmt.Errorf("thermo row %q: column %q: %w", line, v, err)
				}
			}
			tab.rows = append(tab.rows, thermoRow{step: step, cols: f[1:]})
		}
	}
	if tab.header == nil {
		return tab, fmt.Errorf("no thermo header (a line starting with Step)")
	}
	return tab, nil
}

// compareThermo says where got differs from want: header, any column of
// any row, a row missing, repeated or added.
func compareThermo(want, got thermoTable) error {
	if strings.Join(want.header, " ") != strings.Join(got.header, " ") {
		return fmt.Errorf("thermo header %q, want %q", got.header, want.header)
	}
	for i := 0; i < len(want.rows) && i < len(got.rows); i++ {
		w, g := want.rows[i], got.rows[i]
		if w.step != g.step {
			return fmt.Errorf("row %d is step %d, want step %d (a row lost or repeated)", i, g.step, w.step)
		}
		for k := range w.cols {
			if w.cols[k] != g.cols[k] {
				return fmt.Errorf("step %d, %s = %s, undisturbed run %s\n got: %s\nwant: %s",
					w.step, want.header[k+1], g.cols[k], w.cols[k], g, w)
			}
		}
	}
	if len(got.rows) != len(want.rows) {
		return fmt.Errorf("%d thermo rows, the undisturbed run has %d", len(got.rows), len(want.rows))
	}
	return nil
}

// rowsAfter counts the rows of steps after step.
func rowsAfter(tab thermoTable, step int) int {
	n := 0
	for _, r := range tab.rows {
		if r.step > step {
			n++
		}
	}
	return n
}

// lammps returns the LAMMPS binary and the absolute path of the melt input.
func lammps(t *testing.T) (bin, input string) {
	t.Helper()
	bin, err := exec.LookPath("lmp")
	if err != nil {
		t.Fatalf("no LAMMPS binary lmp: install Debian's lammps package (make deps): %v", err)
	}
	input, err = filepath.Abs(filepath.Join("testdata", "lammps", "in.melt"))
	if err != nil {
		t.Fatal(err)
	}
	return bin, input
}

// lammpsReference runs the melt under plain mpirun, undisturbed.
func lammpsReference(t *testing.T, bin string, args ...string) (thermoTable, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	a := append([]string{"-n", fmt.Sprint(lammpsRanks), "--allow-run-as-root", "--oversubscribe", bin}, args...)
	start := time.Now()
	out, err := exec.CommandContext(ctx, "mpirun.openmpi", a...).CombinedOutput()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("mpirun.openmpi %s: %v\n%s", strings.Join(a, " "), err, lastLines(string(out), 30))
	}
	tab, err := parseThermo(string(out))
	if err != nil {
		t.Fatalf("undisturbed run: %v\n%s", err, lastLines(string(out), 30))
	}
	if n := rowsAfter(tab, lammpsSuspend); n < lammpsMinAfter {
		t.Fatalf("undisturbed run printed only %d thermo rows after step %d: the input is too short for the test", n, lammpsSuspend)
	}
	return tab, string(out), took
}

var loopRE = regexp.MustCompile(`(?m)^(Loop time of .*)$\n(?:.*\n)*?^(.*% CPU use.*)$`)

// loopTime returns LAMMPS's own timing lines, for the log.
func loopTime(out string) string {
	if m := loopRE.FindStringSubmatch(out); m != nil {
		return m[1] + "; " + m[2]
	}
	return "no timing lines"
}

// A LAMMPS melt on h1 and h2 is suspended mid-run, restarted on h3 and h4,
// and runs to its end: every thermo row, before and after the restart, is
// the undisturbed run's to the last digit.
func TestLAMMPSRestartElsewhere(t *testing.T) {
	c := newCluster(t, 4)
	bin, input := lammps(t)
	// The simulated hosts share this machine's cores: 2 ranks on a host is
	// no oversubscription by the host's count, so torpor run leaves Open
	// MPI's busy polling on, and 4 polling ranks on 2 cores run several
	// times slower. Yielding changes no arithmetic; plain mpirun
	// --oversubscribe yields too.
	t.Setenv("OMPI_MCA_mpi_yield_when_idle", "1")
	args := []string{"-in", input, "-log", "none", "-nocite"}

	want, refOut, refTook := lammpsReference(t, bin, args...)
	t.Logf("undisturbed mpirun: %d thermo rows up to step %d in %s (%s)",
		len(want.rows), want.rows[len(want.rows)-1].step, refTook.Round(time.Second), loopTime(refOut))

	start := time.Now()
	j := c.runMPI("lammps", lammpsRanks, "h1:2,h2:2", bin, args...)
	j.waitOutput(regexp.MustCompile(fmt.Sprintf(`(?m)^\s+%d\s+\S`, lammpsSuspend)), 5*time.Minute)
	reached := time.Since(start)
	h := lastLines(c.mustCLI("suspend", j.id), 1)
	suspended := time.Since(start)

	// n0 holds rank 0, the only rank that prints; its output file is
	// complete up to the checkpoint once suspend has returned.
	n0, err := os.ReadFile(filepath.Join(c.runDir, "jobs", j.id, "n0.out"))
	if err != nil {
		t.Fatalf("output of n0 at the checkpoint: %v", err)
	}
	before, err := parseThermo(string(n0))
	if err != nil || len(before.rows) == 0 {
		t.Fatalf("thermo of n0 at the checkpoint: %v (%d rows)\n%s", err, len(before.rows), lastLines(string(n0), 20))
	}
	restartStep := before.rows[len(before.rows)-1].step
	t.Logf("step %d after %s; suspended after step %d as checkpoint %s in %s",
		lammpsSuspend, reached.Round(time.Second), restartStep, h, (suspended - reached).Round(time.Millisecond))

	restartAt := time.Now()
	c.mustCLI("restart", h, "--host", "n0=h3", "--host", "n1=h4")
	if ps := c.mustCLI("ps"); !strings.Contains(ps, "n0@h3,n1@h4") {
		t.Fatalf("after restart on h3,h4:\n%s", ps)
	}
	c.waitState(j.id, "running", time.Minute)
	t.Logf("restarted on h3,h4 in %s", time.Since(restartAt).Round(time.Millisecond))

	j.mustEnd(10 * time.Minute)
	took := time.Since(start)
	out := j.output()
	if !strings.Contains(out, "Total wall time") {
		t.Fatalf("job %s ended without LAMMPS's \"Total wall time\":\n%s", j.id, lastLines(out, 30))
	}
	got, err := parseThermo(out)
	if err != nil {
		t.Fatalf("torpor run: %v\n%s", err, lastLines(out, 30))
	}
	after := rowsAfter(got, restartStep)
	if after < lammpsMinAfter {
		t.Fatalf("only %d thermo rows after the restart at step %d: it came too late to test anything", after, restartStep)
	}
	if err := compareThermo(want, got); err != nil {
		t.Fatalf("restarted on other hosts, LAMMPS diverged from the undisturbed run: %v", err)
	}
	t.Logf("torpor run (suspend after step %d, restart on h3,h4) took %s (%s): all %d thermo rows equal the undisturbed run's (%d before the restart, %d after)",
		restartStep, took.Round(time.Second), loopTime(out), len(got.rows), len(got.rows)-after, after)
}

// The comparison catches one digit changed anywhere, a lost row and a
// repeated row; torpor's own messages between rows are not rows.
func TestCompareThermo(t *testing.T) {
	const ref = `LAMMPS (29 Sep 2021 - Update 2)
  1 by 2 by 2 MPI processor grid
Step Temp PotEng Press
       0       2.9999999999999956       -6.773368053255421      -3.7027964138355833
     100       1.6538422476734185      -4.7605427058121146        5.805485882473759
     200       1.6515507499208284      -4.7559561200714038        5.832149943248929
Loop time of 1.2 on 4 procs for 200 steps with 32000 atoms
Pair    | 0.055323   | 0.057911   | 0.061616   |   1.0 | 26.47
Total wall time: 0:00:01
`
	want, err := parseThermo(ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.rows) != 3 || want.rows[2].step != 200 {
		t.Fatalf("parsed %d rows: %v", len(want.rows), want.rows)
	}
	cases := []struct {
		name, out string
		ok        bool
	}{
		{"same", ref, true},
		{"torpor lines between rows", strings.Replace(ref, "     100 ", "torpor: job lammps started on n0@h1(198.18.0.2)\n     100 ", 1), true},
		{"last digit", strings.Replace(ref, "5.832149943248929", "5.832149943248928", 1), false},
		{"first row", strings.Replace(ref, "-6.773368053255421", "-6.773368053255422", 1), false},
		{"row lost", strings.Replace(ref, "     100       1.6538422476734185      -4.7605427058121146        5.805485882473759\n", "", 1), false},
		{"row repeated", strings.Replace(ref, "Loop time", "     200       1.6515507499208284      -4.7559561200714038        5.832149943248929\nLoop time", 1), false},
		{"column renamed", strings.Replace(ref, "Press", "Volume", 1), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseThermo(tc.out)
			if err == nil {
				err = compareThermo(want, got)
			}
			if (err == nil) != tc.ok {
				t.Fatalf("compare: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
