package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestCommitListGet(t *testing.T) {
	s := newStore(t)
	a1 := commitOne(t, s, "ring-7f3a")
	a2 := commitOne(t, s, "ring-7f3a")
	b1 := commitOne(t, s, "stencil")

	if a1.Handle != "ring-7f3a/000001" || a2.Handle != "ring-7f3a/000002" || b1.Handle != "stencil/000001" {
		t.Fatalf("handles = %s %s %s", a1.Handle, a2.Handle, b1.Handle)
	}
	cps, err := s.List("ring-7f3a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := handles(cps), []string{"ring-7f3a/000001", "ring-7f3a/000002"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	all, err := s.List("")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := handles(all), []string{"ring-7f3a/000001", "ring-7f3a/000002", "stencil/000001"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("List(all) = %v, want %v", got, want)
	}

	got, err := s.Get("ring-7f3a/000002")
	if err != nil {
		t.Fatal(err)
	}
	m := got.Manifest
	if m.Format != FormatVersion || m.Job != "ring-7f3a" || m.Seq != 2 || m.Kind != KindCheckpoint || !m.LeaveRunning {
		t.Fatalf("manifest header = %+v", m)
	}
	var spec bytes.Buffer
	if err := json.Compact(&spec, m.Spec); err != nil || spec.String() != `{"command":["./ring"],"np":4}` {
		t.Fatalf("spec = %s", m.Spec)
	}
	if m.Phases["dump"] != Duration(1500*time.Millisecond) || m.Phases["freeze"] != Duration(3*time.Millisecond) {
		t.Fatalf("phases = %v", m.Phases)
	}
	n0, ok := m.Node("n0")
	if !ok || n0.IP != "198.18.0.10" || n0.Host != "hostA" || n0.Hostname != "jn0" || n0.FileCount != 3 || n0.TotalBytes != 8192+14+3 {
		t.Fatalf("n0 = %+v", n0)
	}
	n1, _ := m.Node("n1")
	if m.TotalBytes != n0.TotalBytes+n1.TotalBytes || n1.FileCount != 2 {
		t.Fatalf("total %d, n1 %+v", m.TotalBytes, n1)
	}
	if m.Created.IsZero() || time.Since(m.Created) > time.Minute {
		t.Fatalf("created = %v", m.Created)
	}
	latest, err := s.Latest("ring-7f3a")
	if err != nil || latest.Handle != a2.Handle {
		t.Fatalf("Latest = %v, %v", latest.Handle, err)
	}
	for _, h := range []string{a1.Handle, a2.Handle, b1.Handle} {
		if err := s.Verify(context.Background(), h); err != nil {
			t.Fatalf("Verify(%s): %v", h, err)
		}
	}
	if _, err := s.Get("ring-7f3a/000009"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.Latest("nojob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Latest(nojob) = %v, want ErrNotFound", err)
	}
}

func TestPermissions(t *testing.T) {
	s := newStore(t)
	cp := commitOne(t, s, "job")
	err := filepath.WalkDir(cp.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %#o, want %#o", p, st.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestIncompleteCheckpointInvisibleAndRecovered(t *testing.T) {
	root := filepath.Join(t.TempDir(), "ckpt")
	s, err := Open(root, testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	good := commitOne(t, s, "job")
	// A commit that never finished: images and node manifests, no job manifest,
	// plus a temporary manifest left by a crash in the middle of the atomic write.
	p, err := s.Begin("job")
	if err != nil {
		t.Fatal(err)
	}
	dumpNodes(t, p, smallImages())
	if err := os.WriteFile(filepath.Join(p.Dir(), ".manifest.json.tmp-123"), []byte(`{"format":1`), 0o600); err != nil {
		t.Fatal(err)
	}
	// A stray temp file in a committed checkpoint is cleaned, the checkpoint kept.
	if err := os.WriteFile(filepath.Join(good.Dir, ".manifest.json.tmp-9"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	cps, err := s.List("")
	if err != nil {
		t.Fatal(err)
	}
	if got := handles(cps); !reflect.DeepEqual(got, []string{good.Handle}) {
		t.Fatalf("List = %v, want only %s", got, good.Handle)
	}
	if _, err := s.Get(p.Handle()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(incomplete) = %v, want ErrNotFound", err)
	}
	if l, err := s.Latest("job"); err != nil || l.Handle != good.Handle {
		t.Fatalf("Latest = %s, %v", l.Handle, err)
	}
	// The same process must not remove its own pending checkpoint.
	if removed, err := s.Recover(); err != nil || len(removed) != 0 {
		t.Fatalf("Recover with pending = %v, %v; want nothing removed", removed, err)
	}
	// A restarted coordinator does.
	s2, err := Open(root, testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	removed, err := s2.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(removed, []string{p.Handle()}) {
		t.Fatalf("Recover = %v, want [%s]", removed, p.Handle())
	}
	if _, err := os.Stat(p.Dir()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("incomplete dir still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(good.Dir, ".manifest.json.tmp-9")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temp file in committed checkpoint not removed: %v", err)
	}
	if err := s2.Verify(context.Background(), good.Handle); err != nil {
		t.Fatalf("good checkpoint after Recover: %v", err)
	}
	// The interrupted number is not reused.
	next, err := s2.Begin("job")
	if err != nil {
		t.Fatal(err)
	}
	if next.Handle() != "job/000003" {
		t.Fatalf("next after recover = %s, want job/000003", next.Handle())
	}
}

func TestSeqNeverReused(t *testing.T) {
	s := newStore(t)
	for i := 0; i < 3; i++ {
		commitOne(t, s, "job")
	}
	if err := s.Delete("job/000003"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("job/000003"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	if cp := commitOne(t, s, "job"); cp.Handle != "job/000004" {
		t.Fatalf("after Delete got %s, want job/000004", cp.Handle)
	}
	if _, err := s.Prune("job", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("job/000004"); err != nil {
		t.Fatal(err)
	}
	p, err := s.Begin("job")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	if p.Handle() != "job/000005" {
		t.Fatalf("after Prune+Delete of everything got %s, want job/000005", p.Handle())
	}
	// Reopening the store (a restarted coordinator) keeps counting.
	s2, err := Open(s.Root(), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if cp := commitOne(t, s2, "job"); cp.Handle != "job/000006" {
		t.Fatalf("after reopen got %s, want job/000006", cp.Handle)
	}
}

func TestPrune(t *testing.T) {
	tests := []struct {
		keep    int
		deleted []string
		left    []string
	}{
		{keep: 1, deleted: []string{"j/000001", "j/000002", "j/000003"}, left: []string{"j/000004"}},
		{keep: 2, deleted: []string{"j/000001", "j/000002"}, left: []string{"j/000003", "j/000004"}},
		{keep: 4, deleted: nil, left: []string{"j/000001", "j/000002", "j/000003", "j/000004"}},
		{keep: 9, deleted: nil, left: []string{"j/000001", "j/000002", "j/000003", "j/000004"}},
	}
	for _, tt := range tests {
		t.Run(strings.Repeat("k", tt.keep), func(t *testing.T) {
			s := newStore(t)
			for i := 0; i < 4; i++ {
				commitOne(t, s, "j")
			}
			commitOne(t, s, "other")
			deleted, err := s.Prune("j", tt.keep)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(deleted, tt.deleted) {
				t.Fatalf("deleted = %v, want %v", deleted, tt.deleted)
			}
			cps, _ := s.List("j")
			if got := handles(cps); !reflect.DeepEqual(got, tt.left) {
				t.Fatalf("left = %v, want %v", got, tt.left)
			}
			if o, _ := s.List("other"); len(o) != 1 {
				t.Fatalf("other job touched: %v", handles(o))
			}
		})
	}
	if _, err := newStore(t).Prune("j", 0); err == nil {
		t.Fatal("Prune keep=0 succeeded")
	}
}

// TestPruneUpTo: checkpoints newer than the bound all stay and count for
// none of the keep.
func TestPruneUpTo(t *testing.T) {
	s := newStore(t)
	for i := 0; i < 4; i++ {
		commitOne(t, s, "j")
	}
	deleted, err := s.PruneUpTo("j", 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"j/000001"}; !reflect.DeepEqual(deleted, want) {
		t.Fatalf("deleted = %v, want %v", deleted, want)
	}
	cps, _ := s.List("j")
	if got, want := handles(cps), []string{"j/000002", "j/000003", "j/000004"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("left = %v, want %v", got, want)
	}
	if deleted, err := s.PruneUpTo("j", 2, 9); err != nil || !reflect.DeepEqual(deleted, []string{"j/000002"}) {
		t.Fatalf("PruneUpTo past the newest = %v, %v; want [j/000002]", deleted, err)
	}
}

// TestPruneSweep: Prune deletes at once (List, Load and the sequence
// directory), and leaves the files, moved aside, to Sweep; Recover sweeps
// what an interrupted run left; Delete leaves nothing.
func TestPruneSweep(t *testing.T) {
	s := newStore(t)
	for i := 0; i < 3; i++ {
		commitOne(t, s, "j")
	}
	jd := filepath.Join(s.Root(), "j")
	names := func() []string {
		ents, err := os.ReadDir(jd)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, e.Name())
			}
		}
		return out
	}
	if _, err := s.Prune("j", 2); err != nil {
		t.Fatal(err)
	}
	if got, want := names(), []string{".deleted-000001", "000002", "000003"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after Prune: directories %v, want %v", got, want)
	}
	if cps, _ := s.List("j"); !reflect.DeepEqual(handles(cps), []string{"j/000002", "j/000003"}) {
		t.Fatalf("after Prune: List = %v", handles(cps))
	}
	if _, err := s.Get("j/000001"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of the pruned checkpoint = %v, want ErrNotFound", err)
	}
	if err := s.Sweep("j"); err != nil {
		t.Fatal(err)
	}
	if got, want := names(), []string{"000002", "000003"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after Sweep: directories %v, want %v", got, want)
	}
	// A run that pruned and ended before its Sweep: Recover removes it.
	if _, err := s.Prune("j", 1); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(s.Root(), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Recover(); err != nil {
		t.Fatal(err)
	}
	if got, want := names(), []string{"000003"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after Recover: directories %v, want %v", got, want)
	}
	if err := s2.Delete("j/000003"); err != nil {
		t.Fatal(err)
	}
	if got := names(); len(got) != 0 {
		t.Fatalf("after Delete: directories %v, want none", got)
	}
	if err := s2.Sweep("../x"); err == nil {
		t.Fatal("Sweep of an invalid job name succeeded")
	}
}

// TestPruneCountsWhatListLists: Prune does not read the manifests, yet
// counts exactly the checkpoints List lists: one whose manifest fails its
// signature is committed (and the oldest goes first), a pending one is not.
func TestPruneCountsWhatListLists(t *testing.T) {
	s := newStore(t)
	bad := commitOne(t, s, "j")
	commitOne(t, s, "j")
	if err := os.WriteFile(filepath.Join(bad.Dir, JobManifestName), []byte(`{"format":1,"hmac":"00","payload":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	pend, err := s.Begin("j")
	if err != nil {
		t.Fatal(err)
	}
	defer pend.Abort()
	cps, err := s.List("j")
	if err != nil {
		t.Fatal(err)
	}
	if got := handles(cps); !reflect.DeepEqual(got, []string{"j/000001", "j/000002"}) || cps[0].ManifestErr == nil {
		t.Fatalf("List = %v (first ManifestErr %v), want j/000001 (unreadable) and j/000002", got, cps[0].ManifestErr)
	}
	deleted, err := s.Prune("j", 1)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(deleted, []string{"j/000001"}) {
		t.Fatalf("deleted = %v, want [j/000001]", deleted)
	}
	if _, err := os.Stat(pend.Dir()); err != nil {
		t.Fatalf("Prune touched the pending checkpoint: %v", err)
	}
	if cps, _ := s.List("j"); !reflect.DeepEqual(handles(cps), []string{"j/000002"}) {
		t.Fatalf("left = %v, want [j/000002]", handles(cps))
	}
}

func TestCommitErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, p *Pending) JobManifest
		wantErr string
	}{
		{"no nodes", func(t *testing.T, p *Pending) JobManifest { return JobManifest{} }, "no job-node wrote any images"},
		{"node without manifest", func(t *testing.T, p *Pending) JobManifest {
			dir, _ := p.NodeDir("n0")
			os.WriteFile(filepath.Join(dir, "pages-1.img"), []byte("x"), 0o600)
			return JobManifest{}
		}, "did not finish the dump"},
		{"listed node never dumped", func(t *testing.T, p *Pending) JobManifest {
			dumpNodes(t, p, images{"n0": {"a.img": []byte("a")}})
			return JobManifest{Nodes: []NodeRef{{Name: "n0"}, {Name: "n1"}}}
		}, "node n1 wrote no images"},
		{"unlisted node directory", func(t *testing.T, p *Pending) JobManifest {
			dumpNodes(t, p, smallImages())
			return JobManifest{Nodes: []NodeRef{{Name: "n0"}}}
		}, "node directory n1 is not part of the job manifest"},
		{"image changed after node manifest", func(t *testing.T, p *Pending) JobManifest {
			dumpNodes(t, p, images{"n0": {"a.img": []byte("a")}})
			os.WriteFile(filepath.Join(p.Dir(), "nodes/n0/a.img"), []byte("aa"), 0o600)
			return JobManifest{}
		}, "changed after its node manifest was written"},
		{"first broken job-node of many named", func(t *testing.T, p *Pending) JobManifest {
			// More job-nodes than fillWorkers, read at once: the error is
			// still the first broken one's in the manifest's order.
			imgs := images{}
			for i := range 3 * fillWorkers {
				imgs[fmt.Sprintf("n%02d", i)] = map[string][]byte{"a.img": []byte("a")}
			}
			dumpNodes(t, p, imgs)
			for _, n := range []string{"n37", "n05"} {
				os.WriteFile(filepath.Join(p.Dir(), "nodes", n, "a.img"), []byte("aa"), 0o600)
			}
			return JobManifest{}
		}, "node n05: "},
		{"wrong job", func(t *testing.T, p *Pending) JobManifest {
			dumpNodes(t, p, images{"n0": {"a.img": []byte("a")}})
			return JobManifest{Job: "other"}
		}, `manifest is for job "other"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			p, err := s.Begin("job")
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Commit(tt.setup(t, p))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Commit error = %v, want it to contain %q", err, tt.wantErr)
			}
			if _, err := os.Stat(filepath.Join(p.Dir(), JobManifestName)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("manifest.json exists after failed commit")
			}
			if cps, _ := s.List(""); len(cps) != 0 {
				t.Fatalf("failed commit visible: %v", handles(cps))
			}
			if err := p.Abort(); err != nil {
				t.Fatal(err)
			}
			if err := p.Abort(); err != nil {
				t.Fatalf("second Abort: %v", err)
			}
			if _, err := os.Stat(p.Dir()); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Abort left %s", p.Dir())
			}
		})
	}
}

func TestPendingLifecycle(t *testing.T) {
	s := newStore(t)
	p, err := s.Begin("job")
	if err != nil {
		t.Fatal(err)
	}
	dumpNodes(t, p, smallImages())
	if err := s.Delete(p.Handle()); err == nil || !strings.Contains(err.Error(), "being written") {
		t.Fatalf("Delete of pending = %v", err)
	}
	if _, err := p.Commit(testManifest()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Commit(testManifest()); !errors.Is(err, ErrDone) {
		t.Fatalf("second Commit = %v, want ErrDone", err)
	}
	if err := p.Abort(); !errors.Is(err, ErrDone) {
		t.Fatalf("Abort after Commit = %v, want ErrDone", err)
	}
	if err := s.Verify(context.Background(), p.Handle()); err != nil {
		t.Fatalf("committed checkpoint damaged by Abort attempt: %v", err)
	}
	if _, err := p.NodeDir("../x"); !errors.Is(err, ErrBadHandle) {
		t.Fatalf("NodeDir(../x) = %v", err)
	}
	if _, err := s.Begin("a/b"); !errors.Is(err, ErrBadHandle) {
		t.Fatalf("Begin(a/b) = %v", err)
	}
}

func TestConcurrentBegin(t *testing.T) {
	s := newStore(t)
	const n = 8
	got := make(chan string, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			p, err := s.Begin("job")
			if err != nil {
				errs <- err
				return
			}
			dir, err := p.NodeDir("n0")
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, "a.img"), []byte(p.Handle()), 0o600)
			}
			if err == nil {
				_, err = WriteNodeManifest(context.Background(), dir)
			}
			if err == nil {
				_, err = p.Commit(JobManifest{})
			}
			if err != nil {
				errs <- err
				return
			}
			got <- p.Handle()
		}()
	}
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			t.Fatal(err)
		case h := <-got:
			if seen[h] {
				t.Fatalf("handle %s handed out twice", h)
			}
			seen[h] = true
		}
	}
	cps, err := s.List("job")
	if err != nil || len(cps) != n {
		t.Fatalf("List = %d, %v", len(cps), err)
	}
}

func TestParseHandle(t *testing.T) {
	tests := []struct {
		in   string
		job  string
		seq  uint64
		fail bool
	}{
		{in: "ring-7f3a/000004", job: "ring-7f3a", seq: 4},
		{in: "a.b_c/1234567", job: "a.b_c", seq: 1234567},
		{in: "ring", fail: true},
		{in: "ring/4", fail: true},
		{in: "ring/0000004", fail: true},
		{in: "ring/000000", fail: true},
		{in: "ring/00000x", fail: true},
		{in: "../000001", fail: true},
		{in: "/000001", fail: true},
		{in: ".hidden/000001", fail: true},
		{in: "a/b/000001", fail: true},
		{in: "", fail: true},
		// The same rule as the coordinator's (agentapi.CheckName): at most 63
		// characters (the catalog used to take 128), starting with a letter or
		// digit (it used to take '-' and '_').
		{in: strings.Repeat("j", 63) + "/000001", job: strings.Repeat("j", 63), seq: 1},
		{in: strings.Repeat("j", 64) + "/000001", fail: true},
		{in: "-x/000001", fail: true},
		{in: "_x/000001", fail: true},
	}
	for _, tt := range tests {
		job, seq, err := ParseHandle(tt.in)
		if tt.fail {
			if !errors.Is(err, ErrBadHandle) {
				t.Errorf("ParseHandle(%q) = %q %d %v, want ErrBadHandle", tt.in, job, seq, err)
			}
			continue
		}
		if err != nil || job != tt.job || seq != tt.seq {
			t.Errorf("ParseHandle(%q) = %q %d %v", tt.in, job, seq, err)
		}
	}
}

// TestHostLocalCheckpoint: a checkpoint whose images stay in the shims'
// stores commits with the digests and sizes it is given, verifies on its
// signed manifest alone, and fails verification when a node directory
// (images where none belong) or a changed manifest appears.
func TestHostLocalCheckpoint(t *testing.T) {
	s := newStore(t)
	p, err := s.Begin("ring")
	if err != nil {
		t.Fatal(err)
	}
	sum := strings.Repeat("ab", 32)
	cp, err := p.Commit(JobManifest{HostLocal: true, Nodes: []NodeRef{
		{Name: "n0", Host: "h1", ManifestSHA256: sum, TotalBytes: 100, FileCount: 3},
		{Name: "n1", Host: "h2", ManifestSHA256: sum, TotalBytes: 50, FileCount: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(cp.Handle)
	if err != nil || !got.Manifest.HostLocal || got.Manifest.TotalBytes != 150 {
		t.Fatalf("get: %+v, %v", got.Manifest, err)
	}
	if err := s.Verify(context.Background(), cp.Handle); err != nil {
		t.Fatalf("verify: %v", err)
	}
	// A node without a digest cannot be committed: nothing would check its images.
	p2, err := s.Begin("ring")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p2.Commit(JobManifest{HostLocal: true, Nodes: []NodeRef{{Name: "n0", Host: "h1"}}}); err == nil {
		t.Fatal("a host-local node without a digest was committed")
	}
	p2.Abort()
	if err := os.MkdirAll(filepath.Join(cp.Dir, nodesDirName, "n0"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(context.Background(), cp.Handle); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("verify with a node directory in the catalog: %v, want corrupt", err)
	}
	os.Remove(filepath.Join(cp.Dir, nodesDirName, "n0"))
	mp := filepath.Join(cp.Dir, JobManifestName)
	data, err := os.ReadFile(mp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mp, bytes.Replace(data, []byte(`"h2"`), []byte(`"h3"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(context.Background(), cp.Handle); err == nil {
		t.Fatal("a changed host-local manifest verified")
	}
}

// TestImportManifest: a host-local checkpoint's signed manifest, kept
// elsewhere, brings it back into an empty catalog with the same key, once;
// a manifest another key signed, one changed, and one whose images were in
// the catalog are refused; the next checkpoint comes after the imported.
func TestImportManifest(t *testing.T) {
	s := newStore(t)
	p, err := s.Begin("ring")
	if err != nil {
		t.Fatal(err)
	}
	sum := strings.Repeat("ab", 32)
	cp, err := p.Commit(JobManifest{HostLocal: true, Spec: json.RawMessage(`{"id":"ring"}`), Nodes: []NodeRef{
		{Name: "n0", Host: "h1", ManifestSHA256: sum, TotalBytes: 100, FileCount: 3},
	}})
	if err != nil {
		t.Fatal(err)
	}
	data, err := s.ManifestBytes(cp.Handle)
	if err != nil {
		t.Fatal(err)
	}

	// A new catalog, the same key (what an administrator copies with the PKI).
	moved, err := Open(t.TempDir(), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	h, imported, err := moved.Import(data)
	if err != nil || !imported || h != cp.Handle {
		t.Fatalf("Import = %q, %v, %v", h, imported, err)
	}
	got, err := moved.Get(cp.Handle)
	if err != nil || got.ManifestErr != nil || !got.Manifest.HostLocal || !bytes.Contains(got.Manifest.Spec, []byte(`"ring"`)) || got.Manifest.Nodes[0].ManifestSHA256 != sum {
		t.Fatalf("imported checkpoint: %+v, %v", got, err)
	}
	if err := moved.Verify(context.Background(), cp.Handle); err != nil {
		t.Fatalf("verify the imported checkpoint: %v", err)
	}
	if h, imported, err := moved.Import(data); err != nil || imported || h != cp.Handle {
		t.Fatalf("Import again = %q, %v, %v: want it left as it is", h, imported, err)
	}
	next, err := moved.Begin("ring")
	if err != nil {
		t.Fatal(err)
	}
	if next.Handle() <= cp.Handle {
		t.Fatalf("the checkpoint after an imported %s is %s", cp.Handle, next.Handle())
	}
	next.Abort()

	other, err := Open(t.TempDir(), testKey(2))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Import(data); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a manifest signed with another key: %v, want ErrCorrupt", err)
	}
	if _, _, err := other.Import(bytes.Replace(data, []byte(`"h1"`), []byte(`"h9"`), 1)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a changed manifest: %v, want ErrCorrupt", err)
	}
	if jobs, _ := other.Jobs(); len(jobs) != 0 {
		t.Errorf("refused imports left jobs %v", jobs)
	}
	// The catalog that numbered it, once it deleted it, does not take it
	// back: a shim that was down at the deletion keeps the manifest.
	if err := s.Delete(cp.Handle); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Import(data); !errors.Is(err, ErrDeleted) {
		t.Errorf("import of a deleted checkpoint into its own catalog: %v, want ErrDeleted", err)
	}
	if _, err := s.Get(cp.Handle); !errors.Is(err, ErrNotFound) {
		t.Errorf("the deleted checkpoint after the refused import: %v, want ErrNotFound", err)
	}
	shared := commitOne(t, s, "flat")
	data, err = s.ManifestBytes(shared.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := moved.Import(data); err == nil {
		t.Error("a checkpoint whose images were in the catalog was imported without them")
	}
}

// TestImportPrunedRefused: a host-local checkpoint pruned from the catalog
// while a shim that keeps its manifest was down does not come back when
// that shim registers with a coordinator recovering its catalog; the
// newer one is left as it is.
func TestImportPrunedRefused(t *testing.T) {
	s := newStore(t)
	var kept [][]byte
	for i := 0; i < 2; i++ {
		p, err := s.Begin("ring")
		if err != nil {
			t.Fatal(err)
		}
		cp, err := p.Commit(JobManifest{HostLocal: true, Spec: json.RawMessage(`{"id":"ring"}`), Nodes: []NodeRef{
			{Name: "n0", Host: "h1", ManifestSHA256: strings.Repeat("cd", 32), TotalBytes: 100, FileCount: 3},
		}})
		if err != nil {
			t.Fatal(err)
		}
		data, err := s.ManifestBytes(cp.Handle)
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, data)
	}
	gone, err := s.Prune("ring", 1)
	if err != nil || len(gone) != 1 {
		t.Fatalf("Prune = %v, %v", gone, err)
	}
	if h, _, err := s.Import(kept[0]); !errors.Is(err, ErrDeleted) || h != gone[0] {
		t.Errorf("import of pruned %s: %q, %v; want ErrDeleted", gone[0], h, err)
	}
	if h, imported, err := s.Import(kept[1]); err != nil || imported {
		t.Errorf("import of the kept checkpoint %s: imported %v, %v; want it left as it is", h, imported, err)
	}
	if hs, _ := s.List("ring"); len(hs) != 1 {
		t.Errorf("checkpoints after the imports: %v, want 1", hs)
	}
}

// TestSuperseded: which copies kept elsewhere the catalog let go.
func TestSuperseded(t *testing.T) {
	s := newStore(t)
	for i := 0; i < 3; i++ {
		commitOne(t, s, "ring")
	}
	if gone, err := s.Prune("ring", 1); err != nil || len(gone) != 2 {
		t.Fatalf("Prune = %v, %v", gone, err)
	}
	pend, err := s.Begin("ring")
	if err != nil {
		t.Fatal(err)
	}
	defer pend.Abort()
	for _, c := range []struct {
		handle string
		keep   int
		want   bool
	}{
		{"ring/000001", 1, true},   // pruned, one newer committed
		{"ring/000002", 1, true},   // pruned
		{"ring/000001", 2, false},  // a retention of 2 would keep it
		{"ring/000001", 0, false},  // keep everything
		{"ring/000003", 1, false},  // committed
		{pend.Handle(), 1, false},  // being written
		{"ring/000009", 1, false},  // never numbered
		{"other/000001", 1, false}, // a job this catalog has no counter of
	} {
		got, err := s.Superseded(c.handle, c.keep)
		if err != nil || got != c.want {
			t.Errorf("Superseded(%s, keep %d) = %v, %v; want %v", c.handle, c.keep, got, err, c.want)
		}
	}
	if _, err := s.Superseded("../x", 1); err == nil {
		t.Error("a malformed handle was judged")
	}
}
