package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Post-copy migration of a running Open MPI ring job-node (docs/protocol.md,
// "Post-copy migration"): the job runs on the destination before the
// job-node's memory has arrived, and ends with the undisturbed checksum.
func TestPostCopyMigration(t *testing.T) {
	c := newCluster(t, 4)
	c.criuLogsOnFailure("pc", "n1")
	want := faultReference(t)
	j := c.faultJob("pc")
	out := c.mustCLI("migrate", j.id, "--node", "n1", "--to", "h4", "--postcopy", "always", "--json")
	var m jsonMigrate
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &m); err != nil {
		t.Fatalf("migrate --json: %v\n%s", err, out)
	}
	if m.Mode != "post-copy" || m.DowntimeNS <= 0 || m.LastPageNS < m.DowntimeNS {
		t.Fatalf("migrate: %+v\n%s", m, out)
	}
	t.Logf("post-copy: downtime %v, last page after %v, %d bytes of images, %d bytes of private memory",
		time.Duration(m.DowntimeNS).Round(time.Millisecond), time.Duration(m.LastPageNS).Round(time.Millisecond), m.Bytes, m.MemoryBytes)
	if !strings.Contains(c.logs["shim-h4"].String(), "every page arrived") {
		t.Fatal("the shim of h4 never said every page arrived")
	}
	if _, err := os.Stat(c.nodeCgroup("h2", j.id, "n1")); !os.IsNotExist(err) {
		t.Fatalf("the source's copy of n1 is still on h2 (%v)", err)
	}
	j.progress("after the post-copy migration")
	j.finishWith(want, "after a post-copy migration")
}

// criuLogsOnFailure shows the end of CRIU's logs of a migrated job-node
// (dump and page server on the source, lazy-pages daemon and restore on the
// destination) when the test fails.
func (c *cluster) criuLogsOnFailure(job, node string) {
	t := c.t
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, f := range []string{"dump/" + job + "/" + node + "/dump.log", "restore/" + job + "/" + node + "/lazy-pages.log", "restore/" + job + "/" + node + "/restore.log"} {
			data, err := os.ReadFile(filepath.Join(c.runDir, f))
			if err == nil {
				t.Logf("---- %s ----\n%s", f, lastLines(string(data), 30))
			}
		}
	})
}

// jsonMigrate is what `torpor migrate --json` prints.
type jsonMigrate struct {
	Mode        string `json:"mode"`
	DowntimeNS  int64  `json:"downtime_ns"`
	LastPageNS  int64  `json:"last_page_ns"`
	Bytes       int64  `json:"bytes"`
	MemoryBytes int64  `json:"memory_bytes"`
}
