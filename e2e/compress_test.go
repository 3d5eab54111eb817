package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Checkpoints stored compressed (torpor run --compress), with the real
// parts: an Open MPI stencil on two hosts, a raw checkpoint taken with
// `torpor checkpoint --compress none`, a compressed suspend restarted on two
// other hosts, then a compressed suspend whose memory image is corrupted:
// the restart refuses it before anything runs, --fallback restarts from the
// compressed one before, and the job ends with the undisturbed checksum.
// No restore leaves its scratch directory behind.
func TestCompressedCheckpoints(t *testing.T) {
	c := newCluster(t, 4)
	bin := workload(t, "stencil.openmpi")
	args := []string{"-n", "256", "-i", "300", "-s", "20000", "-p", "25"}
	want := reference(t, "mpirun.openmpi", 4, bin, args...)
	for _, codec := range []string{"zstd", "lz4"} {
		t.Run(codec, func(t *testing.T) {
			c.t = t
			ext := map[string]string{"zstd": ".zst", "lz4": ".lz4"}[codec]
			j := c.startMPI(nil, []string{"--compress", codec}, "stencil-"+codec, 4, "h1:2,h2:2", bin, args...)
			j.progress("started")
			raw := lastLines(c.mustCLI("checkpoint", j.id, "--compress", "none"), 1)
			c.assertStored(t, raw, "")
			j.progress("after raw checkpoint " + raw)

			good := lastLines(c.mustCLI("suspend", j.id), 1)
			c.assertStored(t, good, ext)
			c.mustCLI("restart", good, "--host", "n0=h3", "--host", "n1=h4")
			if ps := c.mustCLI("ps"); !strings.Contains(ps, "n0@h3,n1@h4") {
				t.Fatalf("after restart elsewhere:\n%s", ps)
			}
			j.progress("restarted on h3,h4 from " + good)
			c.assertNoScratch(t)

			bad := lastLines(c.mustCLI("suspend", j.id), 1)
			pages := c.assertStored(t, bad, ext)
			corruptByte(t, pages[0])
			out, code := c.cli("restart", bad, "--host", "n0=h1", "--host", "n1=h2")
			if code == 0 || !strings.Contains(out, "fails verification") || !strings.Contains(out, filepath.Base(pages[0])) {
				t.Fatalf("restart from a corrupted %s image: exit %d\n%s", codec, code, out)
			}
			t.Logf("refused: %s", lastLines(out, 1))
			if st := c.jobState(j.id); st != "suspended" {
				t.Fatalf("job is %s after the refused restart", st)
			}
			out = c.mustCLI("restart", j.id, "--fallback", "--host", "n0=h1", "--host", "n1=h2")
			if !strings.Contains(out, "skipped "+bad) || !strings.Contains(out, good) {
				t.Fatalf("restart --fallback does not say it skipped %s for %s:\n%s", bad, good, out)
			}
			c.waitState(j.id, "running", 30*time.Second)
			c.assertNoScratch(t)
			j.finishWith(want, "after compressed checkpoints")
		})
	}
}

// assertStored checks how a checkpoint stores its job-nodes' memory images:
// raw (ext "") or compressed with the codec whose suffix is ext, in node
// manifests that say so. It returns the stored memory images.
func (c *cluster) assertStored(t *testing.T, handle, ext string) []string {
	t.Helper()
	job, seq, _ := strings.Cut(handle, "/")
	var stored []string
	for _, n := range []string{"n0", "n1"} {
		dir := filepath.Join(c.ckpt, job, seq, "nodes", n)
		raw, _ := filepath.Glob(filepath.Join(dir, "pages-*.img"))
		comp, _ := filepath.Glob(filepath.Join(dir, "pages-*.img.*"))
		nm, err := os.ReadFile(filepath.Join(dir, "node-manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case ext == "" && (len(raw) == 0 || len(comp) != 0 || strings.Contains(string(nm), "codec")):
			t.Fatalf("%s %s: raw pages %v, compressed %v, want raw only", handle, n, raw, comp)
		case ext != "" && (len(raw) != 0 || len(comp) == 0 || !strings.HasSuffix(comp[0], ext) || !strings.Contains(string(nm), `"format": 3`)):
			t.Fatalf("%s %s: raw pages %v, compressed %v, want %s only", handle, n, raw, comp, ext)
		}
		stored = append(stored, raw...)
		stored = append(stored, comp...)
	}
	return stored
}

// assertNoScratch: every shim's restore scratch directory is empty.
func (c *cluster) assertNoScratch(t *testing.T) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(c.runDir, "shims", "*", "restore", "*"))
	if len(left) > 0 {
		t.Fatalf("restores left scratch directories: %v", left)
	}
}
