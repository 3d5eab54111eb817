package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// jsonStored is what TestHostLoss reads of `torpor ls --json`.
type jsonStored struct {
	Handle     string `json:"handle"`
	Stored     string `json:"stored"`
	Copies     int    `json:"copies"`
	Replicated bool   `json:"replicated"`
	Verified   string `json:"verified"`
}

// lsStored is the newest checkpoint of job as `torpor ls --json` lists it.
func (c *cluster) lsStored(job string) jsonStored {
	c.t.Helper()
	out := c.mustCLI("ls", job, "--json")
	var cps []jsonStored
	if err := json.Unmarshal([]byte(out), &cps); err != nil || len(cps) == 0 {
		c.t.Fatalf("ls --json: %v\n%s", err, out)
	}
	return cps[len(cps)-1]
}

// A whole host of an isolated cluster is lost after a host-local checkpoint
// (every shim keeps its job-nodes' images in its own image directory,
// copied to one other host once committed): its shim
// and its job-node are killed and its image directory deleted. The job
// fails; `torpor ls` says the checkpoint lost its replication; `torpor
// restart` puts the lost job-node on a host that never held it, which
// fetches its images from the replica, and the job ends with the
// undisturbed checksum.
func TestHostLoss(t *testing.T) {
	c := newIsolatedCluster(t, 4, "--host-lost-after", "10s")
	want := faultReference(t)
	j := c.faultJob("hl") // n0@h1, n1@h2, n2@h3
	c.criuLogsOnFailure("hl", "n1")
	j.progress("started on h1,h2,h3")
	h := lastLines(c.mustCLI("checkpoint", j.id), 1)
	if !c.waitLog("coordinator", "checkpoint replicated", 2*time.Minute) {
		t.Fatalf("checkpoint %s was never replicated", h)
	}
	// Nothing of the images is in the coordinator's checkpoint directory:
	// each job-node's are in its host's store, and in one other host's.
	seq := strings.TrimPrefix(h, j.id+"/")
	if ents, err := os.ReadDir(filepath.Join(c.hostDir("coord", "ckpt"), j.id, seq, "nodes")); err != nil || len(ents) != 0 {
		t.Fatalf("the checkpoint directory holds images of a host-local checkpoint: %v %v", ents, err)
	}
	held := func(host, node string) bool {
		_, err := os.Stat(filepath.Join(c.hostDir(host, "images"), "checkpoints", j.id, seq, node, "node-manifest.json"))
		return err == nil
	}
	for _, hn := range []struct{ host, node string }{{"h1", "n0"}, {"h2", "n0"}, {"h2", "n1"}, {"h3", "n1"}, {"h3", "n2"}, {"h4", "n2"}} {
		if !held(hn.host, hn.node) {
			t.Fatalf("%s holds no copy of %s's images", hn.host, hn.node)
		}
	}
	if held("h1", "n1") || held("h4", "n1") {
		t.Fatal("n1's images are on more hosts than its own and its one replica")
	}
	if st := c.lsStored(j.id); st.Handle != h || !st.Replicated || st.Copies != 2 || st.Verified != "ok" {
		t.Fatalf("ls after replication: %+v", st)
	}
	// Each replica was synced to its host's disk before it counted.
	for _, hn := range []struct{ host, node string }{{"h2", "n0"}, {"h3", "n1"}, {"h4", "n2"}} {
		if !c.logged("shim-"+hn.host, `msg="checkpoint images synced"`, "node="+hn.node+" ckpt="+h+" ") {
			t.Fatalf("%s's shim never synced its replica of %s:\n%s", hn.host, hn.node, c.logs["shim-"+hn.host])
		}
	}
	t.Logf("checkpoint %s: host-local, every job-node's images on 2 hosts", h)

	// h2 is lost: its shim and its job-node are killed, and what a
	// crash and a new disk would leave of them is removed: the
	// job-node's cgroup and network namespace (no FIN or RST reaches
	// its peers), and the image directory.
	stop(c.shims[1], syscall.SIGKILL)
	cg := c.nodeCgroup("h2", j.id, "n1")
	if err := os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0o600); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ev, err := os.ReadFile(filepath.Join(cg, "cgroup.events"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(ev), "populated 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n1's processes on h2 still run 30 s after cgroup.kill")
		}
	}
	for d := cg; d != filepath.Join(cgroupMount(t), c.cgParent); d = filepath.Dir(d) {
		if err := os.Remove(d); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("ip", "netns", "delete", c.sim.Host(2).NetNS+"-"+j.id+"-n1").CombinedOutput(); err != nil {
		t.Fatalf("delete n1's network namespace: %v\n%s", err, out)
	}
	if err := removeContents(c.hostDir("h2", "images")); err != nil {
		t.Fatal(err)
	}
	t.Log("h2 lost: shim and job-node n1 killed, image directory deleted")
	// The ranks left wait for their peer; the coordinator, which no
	// longer hears from h2's shim (--host-lost-after 10s), fails the job.
	if out, code := c.cli("wait", j.id); code == 0 || !strings.Contains(out, "h2 has not registered") {
		t.Fatalf("torpor wait after losing h2: exit %d\n%s", code, out)
	}
	if st := c.lsStored(j.id); st.Replicated || st.Copies != 1 {
		t.Fatalf("ls after losing h2: %+v, want 1 copy, not replicated", st)
	}
	// Restarted in place, n1 would go to h2, which has no shim.
	if out, code := c.cli("restart", j.id); code == 0 {
		t.Fatalf("restarted onto the lost host:\n%s", out)
	}
	out := c.mustCLI("restart", j.id, "--host", "n1=h4")
	if !strings.Contains(out, h) {
		t.Fatalf("restarted not from %s:\n%s", h, out)
	}
	if !strings.Contains(c.logs["shim-h4"].String(), "fetched checkpoint images") || !held("h4", "n1") {
		t.Fatalf("h4 never fetched n1's images:\n%s", lastLines(c.logs["shim-h4"].String(), 20))
	}
	t.Logf("restarted with n1 on h4, its images from h3's replica")
	if got := c.waitChecksum(j.id); got != want {
		t.Fatalf("checksum %s after losing h2 and a restart, undisturbed %s", got, want)
	}
	t.Logf("job %s: checksum %s after losing a host and a restart from its replica = undisturbed", j.id, want)
}

// removeContents removes everything in dir, but not dir: a mount point
// (an isolated host's own directory) stays.
func removeContents(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
