package e2e

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Quantum ESPRESSO (Debian's quantum-espresso, pw.x built with Open MPI)
// runs the SCF of testdata/qe/si8.in on 4 ranks.
const (
	qeRanks   = 4
	qeSuspend = 4 // suspend once SCF iteration #4 has begun
	// The pseudopotential Debian's quantum-espresso-data ships with its
	// examples.
	qePseudo = "/usr/share/doc/quantum-espresso/examples/EPW/sic/pp/Si.pz-vbc.UPF.gz"
)

// qeResultRE matches the lines of pw.x output that hold results, as printed:
// each SCF iteration's total energy and accuracy, the converged energy, the
// forces on every atom, the total force and the stress tensor.
var qeResultRE = regexp.MustCompile(`(?m)^(?:\s+total energy\s+=.*|\s+estimated scf accuracy\s+<.*|!\s+total energy\s+=.*|\s+atom\s+\d+ type\s+\d+\s+force =.*|\s+Total force =.*|\s+total\s+stress .*|(?:\s+-?\d+\.\d+){6}\s*)$`)

// qeResults returns the result lines of a pw.x output.
func qeResults(out string) []string {
	var lines []string
	for _, l := range qeResultRE.FindAllString(out, -1) {
		lines = append(lines, strings.TrimSpace(l))
	}
	return lines
}

var qeIterRE = regexp.MustCompile(`(?m)^\s+iteration #\s*(\d+)`)

// qeInput writes si8.in for one run: the pseudopotential unpacked next to
// it, outdir below it. It returns the input's path.
func qeInput(t *testing.T, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("pw.x"); err != nil {
		t.Fatalf("no pw.x: install Debian's quantum-espresso and quantum-espresso-data (make deps): %v", err)
	}
	src, err := os.Open(qePseudo)
	if err != nil {
		t.Fatalf("the silicon pseudopotential of quantum-espresso-data (make deps): %v", err)
	}
	defer src.Close()
	zr, err := gzip.NewReader(src)
	if err != nil {
		t.Fatalf("%s: %v", qePseudo, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(filepath.Join(dir, "Si.pz-vbc.UPF"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, zr); err != nil {
		t.Fatalf("unpack %s: %v", qePseudo, err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	tmpl, err := os.ReadFile(filepath.Join("testdata", "qe", "si8.in"))
	if err != nil {
		t.Fatal(err)
	}
	in := strings.NewReplacer("@PSEUDO@", dir, "@OUT@", filepath.Join(dir, "out")).Replace(string(tmpl))
	p := filepath.Join(dir, "si8.in")
	if err := os.WriteFile(p, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A pw.x SCF on h1 and h2 is suspended mid-run, restarted on h3 and h4,
// and runs to its end: every SCF iteration's energy and accuracy, the
// converged total energy, every atom's force and the stress are the
// undisturbed run's to the last printed digit.
func TestQuantumEspresso(t *testing.T) {
	c := newCluster(t, 4)
	// Two ranks per simulated host share this machine's two cores: let
	// waiting ranks yield, as plain mpirun --oversubscribe does (no
	// arithmetic changes).
	t.Setenv("OMPI_MCA_mpi_yield_when_idle", "1")

	refIn := qeInput(t, filepath.Join(c.dir, "qe-ref"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	refOut, err := exec.CommandContext(ctx, "mpirun.openmpi", "-n", fmt.Sprint(qeRanks), "--allow-run-as-root", "--oversubscribe", "pw.x", "-in", refIn).CombinedOutput()
	if err != nil {
		t.Fatalf("undisturbed pw.x: %v\n%s", err, lastLines(string(refOut), 30))
	}
	want := qeResults(string(refOut))
	iters := qeIterRE.FindAllStringSubmatch(string(refOut), -1)
	if !strings.Contains(string(refOut), "convergence has been achieved") || len(iters) < qeSuspend+3 {
		t.Fatalf("the undisturbed run did not converge after more than %d iterations (%d): the input does not test a mid-run restart\n%s", qeSuspend+2, len(iters), lastLines(string(refOut), 30))
	}
	t.Logf("undisturbed mpirun: %d SCF iterations, %d result lines, in %s", len(iters), len(want), time.Since(start).Round(time.Second))

	in := qeInput(t, filepath.Join(c.dir, "qe"))
	pwx, _ := exec.LookPath("pw.x")
	j := c.runMPI("qe", qeRanks, "h1:2,h2:2", pwx, "-in", in)
	j.waitOutput(regexp.MustCompile(fmt.Sprintf(`(?m)^\s+iteration #\s*%d\b`, qeSuspend)), 10*time.Minute)
	h := lastLines(c.mustCLI("suspend", j.id), 1)
	n0, err := os.ReadFile(filepath.Join(c.runDir, "jobs", j.id, "n0.out"))
	if err != nil {
		t.Fatalf("output of n0 at the checkpoint: %v", err)
	}
	at := qeIterRE.FindAllStringSubmatch(string(n0), -1)
	t.Logf("suspended in SCF iteration %s as checkpoint %s", at[len(at)-1][1], h)

	c.mustCLI("restart", h, "--host", "n0=h3", "--host", "n1=h4")
	if ps := c.mustCLI("ps"); !strings.Contains(ps, "n0@h3,n1@h4") {
		t.Fatalf("after restart on h3,h4:\n%s", ps)
	}
	j.mustEnd(10 * time.Minute)
	out := j.output()
	if !strings.Contains(out, "JOB DONE.") {
		t.Fatalf("pw.x under torpor ended without \"JOB DONE.\":\n%s", lastLines(out, 30))
	}
	got := qeResults(out)
	for i := 0; i < len(want) && i < len(got); i++ {
		if got[i] != want[i] {
			t.Fatalf("result line %d differs from the undisturbed run's:\n got: %s\nwant: %s", i, got[i], want[i])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d result lines, the undisturbed run has %d\n%s", len(got), len(want), lastLines(out, 30))
	}
	energy := ""
	for _, l := range got {
		if strings.HasPrefix(l, "!") {
			energy = l
		}
	}
	t.Logf("restarted on h3,h4 from %s: all %d result lines equal the undisturbed run's (%s)", h, len(got), energy)
}

// The result lines are what the comparison needs: every iteration's energy,
// the converged energy, each force, the total force and the stress rows.
func TestQEResults(t *testing.T) {
	const out = `     iteration #  1     ecut=    24.00 Ry     beta= 0.30
     total cpu time spent up to now is        0.5 secs

     total energy              =     -63.36000000 Ry
     estimated scf accuracy    <       0.05000000 Ry

!    total energy              =     -63.39304963 Ry
     Forces acting on atoms (cartesian axes, Ry/au):

     atom    1 type  1   force =     0.00673113    0.00457026    0.00457026
     Total force =     0.034119     Total SCF correction =     0.000001
          total   stress  (Ry/bohr**3)                   (kbar)     P=      -15.31
  -0.00010408   0.00000000   0.00000000          -15.31        0.00        0.00
     PWSCF        :      3.38s CPU     51.81s WALL
`
	got := qeResults(out)
	want := []string{
		"total energy              =     -63.36000000 Ry",
		"estimated scf accuracy    <       0.05000000 Ry",
		"!    total energy              =     -63.39304963 Ry",
		"atom    1 type  1   force =     0.00673113    0.00457026    0.00457026",
		"Total force =     0.034119     Total SCF correction =     0.000001",
		"total   stress  (Ry/bohr**3)                   (kbar)     P=      -15.31",
		"-0.00010408   0.00000000   0.00000000          -15.31        0.00        0.00",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("result lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
