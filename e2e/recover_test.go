package e2e

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The coordinator's host of an isolated cluster is lost with its disk
// after two host-local checkpoints: a new coordinator has only the
// catalog key and the PKI, what an administrator keeps apart. Started
// with --recover-catalog, it takes both checkpoints back from the shims,
// which keep each one's signed job manifest with its images; `torpor ls`
// lists them replicated and verified, and the job restarts from the newer
// and ends with the undisturbed checksum.
func TestCatalogRecovered(t *testing.T) {
	c := newIsolatedCluster(t, 3)
	want := faultReference(t)
	j := c.faultJob("rec") // n0@h1, n1@h2, n2@h3
	first := lastLines(c.mustCLI("checkpoint", j.id), 1)
	c.awaitLogLine("coordinator", `msg="checkpoint replicated" job=`+j.id+` ckpt=`+regexp.QuoteMeta(first)+` `, 2*time.Minute)
	j.progress("after checkpoint " + first)
	second := lastLines(c.mustCLI("suspend", j.id), 1)
	c.awaitLogLine("coordinator", `msg="checkpoint replicated" job=`+j.id+` ckpt=`+regexp.QuoteMeta(second)+` `, 2*time.Minute)
	t.Logf("checkpoints %s and %s, each on 2 hosts; the job is suspended", first, second)

	// The coordinator's host dies; its state and checkpoint directories
	// are gone but for the catalog key.
	stop(c.coord, syscall.SIGKILL)
	state, ckpt := c.hostDir("coord", "state"), c.hostDir("coord", "ckpt")
	key, err := os.ReadFile(filepath.Join(state, "catalog.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{state, ckpt} {
		if err := removeContents(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(state, "catalog.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	c.startCoordinator("--recover-catalog")
	// Until every shim registered again, the checkpoints' images are on
	// hosts the coordinator does not know yet.
	for _, h := range []string{"h1", "h2", "h3"} {
		if !c.waitLog("coordinator", `msg="shim registered" host=`+h+" ", time.Minute) {
			t.Fatalf("%s's shim did not register with the new coordinator:\n%s", h, lastLines(c.logs["coordinator"].String(), 20))
		}
	}
	for _, h := range []string{first, second} {
		c.awaitLogLine("coordinator", `msg="checkpoint recovered" host=h\d job=`+j.id+` ckpt=`+regexp.QuoteMeta(h)+`\n`, time.Minute)
	}
	if st := c.lsStored(j.id); st.Handle != second || !st.Replicated || st.Copies != 2 || st.Verified != "ok" {
		t.Fatalf("ls after the recovery: %+v", st)
	}
	if out := c.mustCLI("ls", j.id); !strings.Contains(out, first) {
		t.Fatalf("ls after the recovery lacks %s:\n%s", first, out)
	}
	t.Logf("a new coordinator with the catalog key only recovered %s and %s from the shims", first, second)

	out := c.mustCLI("restart", j.id)
	if !strings.Contains(out, second) {
		t.Fatalf("restarted not from %s:\n%s", second, out)
	}
	if got := c.waitChecksum(j.id); got != want {
		t.Fatalf("checksum %s after the coordinator's loss and a restart, undisturbed %s", got, want)
	}
	t.Logf("job %s: checksum %s after losing the coordinator's host = undisturbed", j.id, want)
}

// awaitLogLine waits until daemon name's log matches the regular
// expression re, and fails the test after timeout.
func (c *cluster) awaitLogLine(name, re string, timeout time.Duration) {
	c.t.Helper()
	x := regexp.MustCompile(re)
	for deadline := time.Now().Add(timeout); !x.MatchString(c.logs[name].String()); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s never logged %s:\n%s", name, re, lastLines(c.logs[name].String(), 20))
		}
	}
}

// A host-local checkpoint pruned while the shim of a host that keeps a copy
// of it was down stays pruned, and that copy goes when the shim is back.
// The shim keeps the copy and its signed job manifest (the prune's Drop
// could not reach it). A coordinator restarted with --recover-catalog
// meanwhile, which asks every shim for the manifests it keeps, does not
// bring it back (catalog.ErrDeleted) when that shim registers, and then
// has the shim drop it (catalog.Store.Superseded: pruned, and --keep
// newer ones committed); its catalog lists the newer checkpoint only.
func TestPrunedCheckpointStaysPruned(t *testing.T) {
	c := newIsolatedCluster(t, 3, "--keep", "1")
	// n0 on h1 is copied to h2, n1 on h2 to h3 (the next hosts after each).
	j := c.runMPI("pruned", 2, "h1:1,h2:1", workload(t, "ring.openmpi"), faultRingArgs...)
	j.progress("started")
	first := lastLines(c.mustCLI("checkpoint", j.id), 1)
	c.awaitLogLine("coordinator", `msg="checkpoint replicated" job=`+j.id+` ckpt=`+regexp.QuoteMeta(first)+` `, 2*time.Minute)
	kept := filepath.Join(c.hostDir("h3", "images"), "checkpoints", first, "job-manifest.json")
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("h3 keeps no job manifest of %s: %v", first, err)
	}

	stop(c.shims[2], syscall.SIGTERM)
	second := lastLines(c.mustCLI("checkpoint", j.id), 1)
	c.awaitLogLine("coordinator", `msg="pruned old checkpoint" job=`+j.id+`[^\n]* ckpt=`+regexp.QuoteMeta(first)+`\n`, time.Minute)
	c.awaitLogLine("coordinator", `msg="drop checkpoint images" job=`+j.id+`[^\n]* host=h3 ckpt=`+regexp.QuoteMeta(first)+` `, time.Minute)
	stop(c.coord, syscall.SIGTERM)
	c.startCoordinator("--recover-catalog")
	for _, h := range []string{"h1", "h2"} {
		c.awaitLogLine("coordinator", `msg="shim registered" host=`+h+` `, time.Minute)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("h3's copy of pruned %s is gone already (%v): the test cannot show the recovery", first, err)
	}
	t.Logf("%s pruned by %s while h3's shim was down; h3 still keeps its manifest", first, second)

	c.startShim(3)
	c.awaitLogLine("coordinator", `msg="recover the catalog: a checkpoint this catalog deleted stays deleted" host=h3 ckpt=`+regexp.QuoteMeta(first)+`\n`, time.Minute)
	c.awaitLogLine("coordinator", `msg="dropped a pruned checkpoint's copy" host=h3 ckpt=`+regexp.QuoteMeta(first)+`\n`, time.Minute)
	if _, err := os.Stat(filepath.Dir(kept)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("h3 still holds pruned %s after it registered again: %v", first, err)
	}
	out := c.mustCLI("ls", j.id)
	if strings.Contains(out, first) || !strings.Contains(out, second) {
		t.Fatalf("ls after the recovering coordinator met h3: want %s only\n%s", second, out)
	}
	if strings.Contains(c.logs["coordinator"].String(), `msg="checkpoint recovered"`) {
		t.Fatalf("the recovering coordinator imported a checkpoint:\n%s", lastLines(c.logs["coordinator"].String(), 20))
	}
	if st := c.lsStored(j.id); st.Handle != second || st.Verified != "ok" {
		t.Fatalf("ls after h3 dropped %s: %+v", first, st)
	}
	t.Logf("h3 dropped its copy of %s when it registered again; ls lists %s only", first, second)
}

// TestPruneOnceSynced: with --keep 1 and the catalog on the shared disk, a
// checkpoint's older one is pruned only after every job-node's shim synced
// the new one's images: each shim logs its sync with the number of files,
// the coordinator then logs the images on disk, and only after that the
// prune. `ls` then lists the new checkpoint alone.
func TestPruneOnceSynced(t *testing.T) {
	c := newCluster(t, 2, "--keep", "1")
	j := c.runMPI("synced", 2, "h1:1,h2:1", workload(t, "ring.openmpi"), faultRingArgs...)
	j.progress("started")
	first := lastLines(c.mustCLI("checkpoint", j.id), 1)
	second := lastLines(c.mustCLI("checkpoint", j.id), 1)
	pruned := `msg="pruned old checkpoint" job=` + j.id + `[^\n]* ckpt=` + regexp.QuoteMeta(first) + `\n`
	c.awaitLogLine("coordinator", pruned, time.Minute)
	log := c.logs["coordinator"].String()
	onDisk := regexp.MustCompile(`msg="checkpoint images on disk" job=` + j.id + `[^\n]* ckpt=` + regexp.QuoteMeta(second) + ` `).FindStringIndex(log)
	if onDisk == nil || onDisk[0] > regexp.MustCompile(pruned).FindStringIndex(log)[0] {
		t.Fatalf("%s pruned before the coordinator logged %s's images on disk:\n%s", first, second, lastLines(log, 30))
	}
	for _, h := range []string{"h1", "h2"} {
		re := `msg="checkpoint images synced"[^\n]* job=` + j.id + ` node=n\d ckpt=` + regexp.QuoteMeta(second) + ` files=(\d+) `
		c.awaitLogLine("shim-"+h, re, time.Minute) // its log reaches the test through a pipe
		m := regexp.MustCompile(re).FindStringSubmatch(c.logs["shim-"+h].String())
		if m == nil || m[1] == "0" {
			t.Fatalf("shim %s logged no sync of %s's images (%v):\n%s", h, second, m, lastLines(c.logs["shim-"+h].String(), 20))
		}
		t.Logf("shim %s synced %s files of %s", h, m[1], second)
	}
	out := c.mustCLI("ls", j.id)
	if strings.Contains(out, first) || !strings.Contains(out, second) {
		t.Fatalf("ls after the prune: want %s only\n%s", second, out)
	}
}
