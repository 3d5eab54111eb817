package e2e

import (
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
	replicated := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); strings.Count(c.logs["coordinator"].String(), "checkpoint replicated") < n; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d checkpoints were never replicated:\n%s", n, lastLines(c.logs["coordinator"].String(), 20))
			}
		}
	}
	first := lastLines(c.mustCLI("checkpoint", j.id), 1)
	replicated(1)
	j.progress("after checkpoint " + first)
	second := lastLines(c.mustCLI("suspend", j.id), 1)
	replicated(2)
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
		re := regexp.MustCompile(`msg="checkpoint recovered" host=h\d job=` + j.id + ` ckpt=` + regexp.QuoteMeta(h) + `\n`)
		for deadline := time.Now().Add(time.Minute); !re.MatchString(c.logs["coordinator"].String()); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("checkpoint %s was not recovered:\n%s", h, lastLines(c.logs["coordinator"].String(), 20))
			}
		}
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
