package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// TestRecordsOnlyRoots: a record says which cgroup to kill and which
// namespace to enter, so a record a user could have written or replaced is
// not read: one writable by others, one below a directory others may write,
// one that is a symbolic link.
func TestRecordsOnlyRoots(t *testing.T) {
	testutil.RequireRoot(t, "records must be root's")
	write := func(a *Agent, job, node string, mode os.FileMode) string {
		t.Helper()
		p := a.recordPath(job, node)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		data := `{"job":"` + job + `","spec":{"name":"` + node + `"}}`
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newAgent := func() *Agent {
		dir := filepath.Join(t.TempDir(), "run")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return &Agent{cfg: Config{Host: "h1", RunDir: dir}}
	}

	a := newAgent()
	write(a, "job", "n0", 0o600)
	write(a, "job", "n1", 0o666)
	link := a.recordPath("job", "n2")
	if err := os.Symlink(a.recordPath("job", "n0"), link); err != nil {
		t.Fatal(err)
	}
	recs, err := a.loadRecords()
	if len(recs) != 1 || recs[0].Spec.Name != "n0" {
		t.Errorf("read %d records (%v), want only n0's", len(recs), recs)
	}
	if err == nil || !strings.Contains(err.Error(), "n1.json must be root's and writable only by root") || !strings.Contains(err.Error(), "n2.json must be") {
		t.Errorf("error %v, want n1.json and n2.json refused", err)
	}

	b := newAgent()
	write(b, "job", "n0", 0o600)
	if err := os.Chmod(filepath.Join(b.cfg.RunDir, "shims"), 0o777); err != nil {
		t.Fatal(err)
	}
	recs, err = b.loadRecords()
	if len(recs) != 0 || err == nil || !strings.Contains(err.Error(), "shims must be root's") {
		t.Errorf("below a directory anyone may write: read %d records, error %v; want none read, and why", len(recs), err)
	}
}
