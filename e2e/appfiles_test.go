package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testuser"
)

// Programs that write their own files: each runs past its last checkpoint,
// is killed, is restarted from that checkpoint on other hosts, and ends with
// files byte-identical to an undisturbed run's (docs/protocol.md, "The
// application's files").

// mpichFinalizeHang names the MPICH 4.0.2 bug under which a job of Debian
// 12's MPICH may not leave MPI_Finalize (README, "MPICH"); the *.mpich42
// workloads, built against torpor's private MPICH 4.2, must always finish.
const mpichFinalizeHang = "MPICH 4.0.2 ch4:ucx finalize deadlock (a rank flushing its UCX endpoints waits for peers already blocked in the PMI barrier; fixed upstream by pmodels/mpich#6596)"

// tree is a directory's regular files: relative path -> SHA-256. Files a
// restart moved aside (NAME.torpor-after-SEQ) are listed apart: NAME -> the
// moved file's path.
type tree struct {
	files map[string]string
	aside map[string]string
}

func hashTree(t *testing.T, dir string, skip func(rel string) bool) tree {
	t.Helper()
	tr := tree{files: map[string]string{}, aside: map[string]string{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if skip != nil && skip(rel) {
			return nil
		}
		if base, _, ok := strings.Cut(rel, ".torpor-after-"); ok {
			tr.aside[base] = p
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		tr.files[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// checkAside checks the files a restart moved aside (tr.aside): created
// after the checkpoint and before the kill, each holds the bytes the
// undisturbed run (in ref) wrote under its name. The kill may land in the
// middle of the write(2) of the newest (a fatal signal ends a write
// between pages): that one alone may hold only the first part of them.
func checkAside(t *testing.T, ref string, tr tree) {
	t.Helper()
	names := make([]string, 0, len(tr.aside))
	for name := range tr.aside {
		names = append(names, name)
	}
	sort.Strings(names)
	for i, name := range names {
		got, err := os.ReadFile(tr.aside[name])
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(ref, name))
		if err != nil {
			t.Errorf("%s was moved aside but the undisturbed run has no such file: %v", name, err)
			continue
		}
		switch {
		case bytes.Equal(got, want):
		case i == len(names)-1 && len(got) < len(want) && bytes.Equal(got, want[:len(got)]):
			t.Logf("%s, moved aside, holds the first %d of the undisturbed run's %d bytes: the kill ended its write", name, len(got), len(want))
		default:
			t.Errorf("%s, moved aside (%d bytes), differs from the undisturbed run's (%d bytes)", name, len(got), len(want))
		}
	}
}

// sameTree fails unless got holds exactly want's files with want's bytes.
func sameTree(t *testing.T, what string, got, want tree) {
	t.Helper()
	for name, sum := range want.files {
		if got.files[name] != sum {
			t.Errorf("%s: %s differs from the undisturbed run's (sha256 %.12s, want %.12s)", what, name, got.files[name], sum)
		}
	}
	for name := range got.files {
		if _, ok := want.files[name]; !ok {
			t.Errorf("%s: %s is not in the undisturbed run", what, name)
		}
	}
	if len(got.files) == 0 {
		t.Errorf("%s: no files", what)
	}
}

// appJob is a job started with `torpor run` that the test kills and
// restarts through the CLI.
type appJob struct {
	*mpiJob
	cred *syscall.Credential
}

func (c *cluster) cliCred(cred *syscall.Credential, args ...string) string {
	c.t.Helper()
	out, code := c.cliAs(cred, args...)
	if code != 0 {
		c.t.Fatalf("torpor %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// nodeOutput is what rank 0 printed: its job-node's output file, which
// outlives `torpor run` and continues across restarts.
func (j *appJob) nodeOutput() string {
	data, _ := os.ReadFile(filepath.Join(j.c.runDir, "jobs", j.id, "n0.out"))
	return string(data)
}

// progressNode waits for a new progress line of rank 0's after what.
func (j *appJob) progressNode(what string) {
	j.c.t.Helper()
	before := strings.Count(j.nodeOutput(), " iter=")
	deadline := time.Now().Add(60 * time.Second)
	for strings.Count(j.nodeOutput(), " iter=") <= before {
		if time.Now().After(deadline) {
			out, _ := j.c.cli("ps")
			j.c.t.Fatalf("%s: job %s made no progress\n%s\n%s", what, j.id, out, lastLines(j.nodeOutput(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	j.c.t.Logf("%s: %s", what, lastLines(j.nodeOutput(), 1))
}

// killAndRestart kills every job-node (the job fails; `torpor run`, which
// has no --restart-on-failure here, ends) and restarts the job from its
// newest checkpoint (with --fallback: the newest that verifies) on hosts.
// It returns what `torpor restart` printed.
func (j *appJob) killAndRestart(fallback bool, hosts ...string) string {
	j.c.t.Helper()
	j.c.cliCred(j.cred, "cancel", j.id)
	j.c.waitState(j.id, "failed", 30*time.Second)
	if err := j.run.Wait(); err == nil {
		j.c.t.Fatalf("torpor run of %s succeeded for a killed job", j.id)
	}
	args := []string{"restart", j.id}
	if fallback {
		args = append(args, "--fallback")
	}
	for i, h := range hosts {
		args = append(args, "--host", fmt.Sprintf("n%d=%s", i, h))
	}
	out := j.c.cliCred(j.cred, args...)
	j.c.t.Logf("torpor %s:\n%s", strings.Join(args, " "), strings.TrimSpace(out))
	return out
}

// wait waits for the job's end after a restart and returns rank 0's
// checksum. A job whose ranks printed their result but hang in
// MPI_Finalize (hangOK names the upstream bug) is cancelled instead.
func (j *appJob) wait(timeout time.Duration, hangOK string) string {
	j.c.t.Helper()
	deadline := time.Now().Add(timeout)
	var m []string
	for m = doneRE.FindStringSubmatch(j.nodeOutput()); m == nil; m = doneRE.FindStringSubmatch(j.nodeOutput()) {
		if time.Now().After(deadline) {
			out, _ := j.c.cli("ps")
			j.c.t.Fatalf("job %s did not finish within %s\n%s\n%s", j.id, timeout, out, lastLines(j.nodeOutput(), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, j.c.torpor, "wait", j.id)
	cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+j.c.socket)
	out, err := cmd.CombinedOutput()
	switch {
	case ctx.Err() != nil && hangOK != "":
		j.c.t.Logf("job %s printed its result but its ranks did not leave MPI_Finalize within 60 s: %s; cancelling it", j.id, hangOK)
		j.c.cliCred(j.cred, "cancel", j.id)
	case err != nil || !strings.Contains(string(out), "finished"):
		j.c.t.Fatalf("torpor wait %s: %v\n%s", j.id, err, out)
	}
	return m[2]
}

// userDir makes a directory the job's owner writes in.
func userDir(t *testing.T, parent, name string, u *testuser.User) string {
	t.Helper()
	d := filepath.Join(parent, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if u != nil {
		if err := os.Chown(d, u.UID, u.GID); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// userCopy copies a workload where the test's user can run it.
func userCopy(t *testing.T, c *cluster, name string) string {
	t.Helper()
	data, err := os.ReadFile(workload(t, name))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(c.dir, name)
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestAppFiles: appfiles, as a user, appends to a log it keeps open,
// rewrites a results file in place, creates a numbered file now and then
// (closed again: kept through --keep), and every rank appends to a log of
// its own. Killed after running past a checkpoint and restarted on other
// hosts, it ends with the files of an undisturbed run; the numbered files
// it created after the checkpoint were moved aside, not lost.
func TestAppFiles(t *testing.T) {
	alice := testuser.New(t) // before the cluster: removed after it
	c := newCluster(t, 4)
	args := []string{"-i", "300", "-s", "20000", "-k", "7", "-p", "10"}
	for _, p := range []struct{ name, mpirun, bin, hangOK string }{
		{"files", "mpirun.openmpi", "appfiles.openmpi", ""},
		{"filesmpich", "mpirun.mpich", "appfiles.mpich42", ""},
	} {
		t.Run(p.name, func(t *testing.T) {
			c.t = t
			bin := userCopy(t, c, p.bin)
			ref := userDir(t, c.dir, p.name+"-ref", nil)
			want := reference(t, p.mpirun, 4, bin, append([]string{"-d", ref}, args...)...)
			out := userDir(t, c.dir, p.name+"-out", alice)
			j := &appJob{c.startMPI(as(alice), []string{"--keep", out}, p.name, 4, "h1:2,h2:2", bin, append([]string{"-d", out}, args...)...), as(alice)}
			j.progressNode("started")
			h := lastLines(c.cliCred(j.cred, "checkpoint", j.id), 1)
			j.progressNode("checkpoint " + h)
			j.progressNode("ran past the checkpoint") // 20 iterations: numbered files came after it
			rout := j.killAndRestart(false, "h3", "h4")
			if !strings.Contains(rout, "moved aside") {
				t.Errorf("torpor restart listed no file moved aside:\n%s", rout)
			}
			j.progressNode("restarted on h3,h4 from " + h)
			got := j.wait(3*time.Minute, p.hangOK)
			if got != want {
				t.Fatalf("checksum %s under torpor, %s undisturbed", got, want)
			}
			res, wantTree := hashTree(t, out, nil), hashTree(t, ref, nil)
			sameTree(t, p.name, res, wantTree)
			if len(res.aside) == 0 {
				t.Error("no file was moved aside")
			}
			checkAside(t, ref, res)
			t.Logf("%s as %s: %d files equal to the undisturbed run's, checksum %s; %d moved aside", p.name, alice.Name, len(res.files), got, len(res.aside))
		})
	}
}

// TestMPIIOSharedFile: every rank of mpiio writes its blocks of one shared
// file with MPI_File_write_at_all, the file open on both job-nodes. Killed
// past a checkpoint, restarted on other hosts, the file is the undisturbed
// run's.
func TestMPIIOSharedFile(t *testing.T) {
	c := newCluster(t, 4)
	bin := workload(t, "mpiio.openmpi")
	args := []string{"-i", "300", "-s", "20000", "-b", "4", "-p", "10"}
	ref := userDir(t, c.dir, "mpiio-ref", nil)
	want := reference(t, "mpirun.openmpi", 4, bin, append([]string{"-d", ref}, args...)...)
	out := userDir(t, c.dir, "mpiio-out", nil)
	j := &appJob{c.startMPI(nil, nil, "mpiio", 4, "h1:2,h2:2", bin, append([]string{"-d", out}, args...)...), nil}
	j.progressNode("started")
	h := lastLines(c.mustCLI("checkpoint", j.id), 1)
	// Both job-nodes hold shared.dat; one of them captured it.
	kinds := map[string]string{}
	for _, n := range []string{"n0", "n1"} {
		var ix struct {
			Entries []struct{ Path, Kind string }
		}
		data, err := os.ReadFile(filepath.Join(c.ckpt, h, "nodes", n, "torpor-app", "index.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, &ix); err != nil {
			t.Fatal(err)
		}
		for _, e := range ix.Entries {
			if filepath.Base(e.Path) == "shared.dat" {
				kinds[n] = e.Kind
			}
		}
	}
	if !(kinds["n0"] == "content" && kinds["n1"] == "elsewhere") && !(kinds["n1"] == "content" && kinds["n0"] == "elsewhere") {
		t.Fatalf("shared.dat captured as %v, want whole by one job-node and left to it by the other", kinds)
	}
	j.progressNode("checkpoint " + h)
	j.progressNode("ran past the checkpoint")
	j.killAndRestart(false, "h3", "h4")
	j.progressNode("restarted on h3,h4 from " + h)
	if got := j.wait(3*time.Minute, ""); got != want {
		t.Fatalf("checksum %s under torpor, %s undisturbed", got, want)
	}
	sameTree(t, "mpiio", hashTree(t, out, nil), hashTree(t, ref, nil))
}

// TestAppFilesFallback: the newest checkpoint is corrupted after the job ran
// past it; the restart falls back to the one before, and the files go back
// to that older checkpoint: the job still ends with the undisturbed files.
func TestAppFilesFallback(t *testing.T) {
	c := newCluster(t, 4)
	bin := workload(t, "appfiles.openmpi")
	args := []string{"-i", "300", "-s", "20000", "-k", "7", "-p", "10"}
	ref := userDir(t, c.dir, "fb-ref", nil)
	want := reference(t, "mpirun.openmpi", 4, bin, append([]string{"-d", ref}, args...)...)
	out := userDir(t, c.dir, "fb-out", nil)
	j := &appJob{c.startMPI(nil, []string{"--keep", out}, "fallback", 4, "h1:2,h2:2", bin, append([]string{"-d", out}, args...)...), nil}
	j.progressNode("started")
	older := lastLines(c.mustCLI("checkpoint", j.id), 1)
	j.progressNode("checkpoint " + older)
	j.progressNode("between the checkpoints")
	newest := lastLines(c.mustCLI("checkpoint", j.id), 1)
	j.progressNode("checkpoint " + newest)
	pages, _ := filepath.Glob(filepath.Join(c.ckpt, newest, "nodes", "n0", "pages-*.img"))
	if len(pages) == 0 {
		t.Fatalf("no pages image in %s", newest)
	}
	corruptByte(t, pages[0])
	rout := j.killAndRestart(true, "h3", "h4")
	if !strings.Contains(rout, "skipped "+newest) || !strings.Contains(rout, "from "+older) {
		t.Fatalf("restart --fallback did not skip %s for %s:\n%s", newest, older, rout)
	}
	j.progressNode("restarted from " + older)
	if got := j.wait(3*time.Minute, ""); got != want {
		t.Fatalf("checksum %s under torpor, %s undisturbed", got, want)
	}
	res, wantTree := hashTree(t, out, nil), hashTree(t, ref, nil)
	sameTree(t, "fallback", res, wantTree)
	if len(res.aside) == 0 {
		t.Error("no file created after the older checkpoint was moved aside")
	}
}

// lammpsTiming matches the lines of a LAMMPS log that report time (loop
// time, performance, CPU use, the timing breakdown, wall time), which
// differ between any two runs.
var lammpsTiming = regexp.MustCompile(`(?i)(time|cpu|performance|\|)`)

// TestLAMMPSFiles: LAMMPS writes its default log.lammps and a dump
// trajectory in its working directory, checkpointed every few seconds;
// killed and restarted on other hosts, both files are the undisturbed run's
// (the log but for its timing lines).
func TestLAMMPSFiles(t *testing.T) {
	c := newCluster(t, 4)
	bin, input := lammps(t)
	t.Setenv("OMPI_MCA_mpi_yield_when_idle", "1") // see TestLAMMPSRestartElsewhere
	dumpIn := filepath.Join(filepath.Dir(input), "in.melt-dump")
	args := []string{"-in", dumpIn, "-nocite", "-var", "cells", "12", "-var", "steps", "6000", "-var", "every", "50"}

	ref := userDir(t, c.dir, "lammps-ref", nil)
	cmd := exec.Command("mpirun.openmpi", append([]string{"-n", fmt.Sprint(lammpsRanks), "--allow-run-as-root", "--oversubscribe", bin}, args...)...)
	cmd.Dir = ref
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("undisturbed LAMMPS: %v\n%s", err, lastLines(string(out), 20))
	}
	out := userDir(t, c.dir, "lammps-out", nil)
	j := &appJob{c.startMPI(nil, []string{"--wdir", out, "--checkpoint-interval", "3s"}, "lammpsfiles", lammpsRanks, "h1:2,h2:2", bin, args...), nil}
	// Two periodic checkpoints, then more steps past the second.
	j.waitOutput(regexp.MustCompile(`(?s)committed in.*committed in`), 3*time.Minute)
	log := filepath.Join(out, "log.lammps")
	rows := func() int {
		data, _ := os.ReadFile(log)
		return len(regexp.MustCompile(`(?m)^\s+\d+\s+\S`).FindAll(data, -1))
	}
	past := rows() + 3
	deadline := time.Now().Add(2 * time.Minute)
	for rows() < past {
		if time.Now().After(deadline) {
			t.Fatalf("LAMMPS made no progress after its checkpoints\n%s", lastLines(j.output(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	j.killAndRestart(false, "h3", "h4")
	c.waitState(j.id, "running", time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w := exec.CommandContext(ctx, c.torpor, "wait", j.id)
	w.Env = append(os.Environ(), "TORPOR_SOCKET="+c.socket)
	if wout, err := w.CombinedOutput(); err != nil || !strings.Contains(string(wout), "finished") {
		t.Fatalf("torpor wait %s: %v\n%s", j.id, err, wout)
	}
	for _, name := range []string{"log.lammps", "dump.melt"} {
		a, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(ref, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "log.lammps" {
			a, b = []byte(withoutTiming(string(a))), []byte(withoutTiming(string(b)))
			if !strings.Contains(string(a), "Total wall time") {
				// The timing lines are filtered; its last line's word is not.
				t.Logf("log.lammps ends: %s", lastLines(string(a), 3))
			}
		}
		if string(a) != string(b) {
			t.Errorf("%s differs from the undisturbed run's (%d bytes, want %d)\n%s", name, len(a), len(b), firstDiff(string(a), string(b)))
		}
	}
	sa, sb := hashTree(t, out, nil), hashTree(t, ref, nil)
	t.Logf("LAMMPS: log.lammps (but for %d timing lines) and dump.melt (%d bytes) equal the undisturbed run's; files %d and %d",
		len(lammpsTiming.FindAllString(mustRead(t, filepath.Join(ref, "log.lammps")), -1)), len(mustRead(t, filepath.Join(ref, "dump.melt"))), len(sa.files), len(sb.files))
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func withoutTiming(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !lammpsTiming.MatchString(l) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// firstDiff shows where two texts first differ.
func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(la) && i < len(lb); i++ {
		if la[i] != lb[i] {
			return fmt.Sprintf("line %d:\n got %q\nwant %q", i+1, la[i], lb[i])
		}
	}
	return fmt.Sprintf("one is a prefix of the other (%d and %d lines)", len(la), len(lb))
}
