package appfiles

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testuser"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// holder starts a process that holds files open for writing, as a job's
// task would: fd 3 appending to log, fd 4 read-write on results.
func holder(t *testing.T, u *User, log, results string) int {
	t.Helper()
	cmd := exec.Command("/bin/bash", "-c", `exec 3>>"$1" 4<>"$2"; echo ready; exec sleep 600`, "bash", log, results)
	if u != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID)}}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("holder did not start: %q %v", buf, err)
	}
	return cmd.Process.Pid
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func appendTo(t *testing.T, p, s string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// snapshot reads every regular file below dir.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			m[rel] = string(b)
		}
		return nil
	})
	return m
}

func same(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: files %v, want %v", what, keys(got), keys(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", what, k, trunc(got[k]), trunc(v))
		}
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func trunc(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}

func kinds(ix *Index) map[string]Kind {
	m := map[string]Kind{}
	for _, e := range ix.Entries {
		m[filepath.Base(e.Path)] = e.Kind
	}
	return m
}

// TestCaptureAndRestore: files held open for writing and below a --keep
// directory come back as they were at each of two checkpoints; a file that
// only grew is captured by its length the second time; what came after a
// checkpoint below the kept directory is moved aside, not lost.
func TestCaptureAndRestore(t *testing.T) {
	testutil.RequireRoot(t, "reading another process's /proc/PID/fd")
	dir := t.TempDir()
	work := filepath.Join(dir, "work")
	out := filepath.Join(work, "out")
	os.MkdirAll(out, 0o755)
	log, results := filepath.Join(work, "log"), filepath.Join(work, "results")
	write(t, log, strings.Repeat("line 1\n", 20000)) // larger than TailLen
	write(t, results, "results v1 long\n")
	write(t, filepath.Join(out, "step-1"), "one")
	pid := holder(t, nil, log, results)

	img1, img2 := filepath.Join(dir, "img1"), filepath.Join(dir, "img2")
	opts := CaptureOptions{Pids: []int{pid}, Keep: []string{out}, Images: img1}
	ix1, err := Capture(opts)
	if err != nil {
		t.Fatal(err)
	}
	if k := kinds(ix1); k["log"] != KindContent || k["results"] != KindContent || k["step-1"] != KindContent {
		t.Fatalf("first capture: %v, want everything whole", k)
	}
	at1 := snapshot(t, work)

	appendTo(t, log, "line 2\n")
	write(t, results, "v2\n") // shorter: rewritten in place
	write(t, filepath.Join(out, "step-2"), "two")
	opts.Images, opts.Prev = img2, ix1
	ix2, err := Capture(opts)
	if err != nil {
		t.Fatal(err)
	}
	if k := kinds(ix2); k["log"] != KindLength || k["results"] != KindContent || k["step-1"] != KindLength || k["step-2"] != KindContent {
		t.Fatalf("second capture: %v, want log and step-1 by length, the others whole", k)
	}
	if ix2.Bytes != int64(len("v2\n")+len("two")) {
		t.Errorf("second capture copied %d bytes", ix2.Bytes)
	}
	at2 := snapshot(t, work)

	// The job runs on.
	appendTo(t, log, "line 3\n")
	write(t, results, "results v3, longer than before\n")
	write(t, filepath.Join(out, "step-3"), "three")
	os.Remove(filepath.Join(out, "step-2"))

	_, moved, err := Restore(RestoreOptions{Images: img2, Seq: "000002"})
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(out, "step-3") + ".torpor-after-000002"
	if len(moved) != 1 || moved[0] != want {
		t.Fatalf("moved aside %v, want [%s]", moved, want)
	}
	// A second restart from the same checkpoint, with a file of the same
	// name again: the first one moved aside is not replaced.
	write(t, filepath.Join(out, "step-3"), "three again")
	if _, moved, err = Restore(RestoreOptions{Images: img2, Seq: "000002"}); err != nil {
		t.Fatal(err)
	}
	if len(moved) != 1 || moved[0] != want+".2" {
		t.Fatalf("second move aside: %v, want [%s.2]", moved, want)
	}
	if b, _ := os.ReadFile(want); string(b) != "three" {
		t.Fatalf("the first file moved aside now holds %q", b)
	}
	os.Remove(want)
	os.Remove(want + ".2")
	same(t, "restored to checkpoint 2", snapshot(t, work), at2)

	// Back to the older checkpoint: every file as it was then.
	if _, moved, err = Restore(RestoreOptions{Images: img1, Seq: "000001"}); err != nil {
		t.Fatal(err)
	}
	want = filepath.Join(out, "step-2") + ".torpor-after-000001"
	if len(moved) != 1 || moved[0] != want {
		t.Fatalf("moved aside %v, want [%s]", moved, want)
	}
	os.Remove(want)
	same(t, "restored to checkpoint 1", snapshot(t, work), at1)

	// A file kept by its length that was rewritten since cannot come back.
	write(t, log, "rewritten\n")
	if _, _, err := Restore(RestoreOptions{Images: img2, Seq: "000002"}); err == nil || !strings.Contains(err.Error(), log) {
		t.Errorf("restore over a rewritten length-only file: %v, want an error naming %s", err, log)
	}
	os.Remove(log)
	if _, _, err := Restore(RestoreOptions{Images: img2, Seq: "000002"}); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("restore of a deleted length-only file: %v, want an error naming it gone", err)
	}
	// A file captured whole comes back even when deleted.
	if _, _, err := Restore(RestoreOptions{Images: img1, Seq: "000001"}); err != nil {
		t.Fatal(err)
	}
	same(t, "deleted files recreated from checkpoint 1", snapshot(t, work), at1)
}

// TestCaptureLimit: a capture over the limit fails, naming the file.
func TestCaptureLimit(t *testing.T) {
	testutil.RequireRoot(t, "reading another process's /proc/PID/fd")
	dir := t.TempDir()
	log, results := filepath.Join(dir, "log"), filepath.Join(dir, "results")
	write(t, log, strings.Repeat("x", 5000))
	write(t, results, "r")
	pid := holder(t, nil, log, results)
	_, err := Capture(CaptureOptions{Pids: []int{pid}, Images: filepath.Join(dir, "img"), Max: 4096})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), log) {
		t.Fatalf("capture over the limit: %v, want ErrTooLarge naming %s", err, log)
	}
}

// TestAsOwner: the shim, root, captures and puts back only what the job's
// owner may read and write: not a root-only file a link below a --keep
// directory points to, not a file in a directory the owner may not write.
func TestAsOwner(t *testing.T) {
	testutil.RequireRoot(t, "creating a user")
	tu := testuser.New(t)
	u := &User{UID: tu.UID, GID: tu.GID, Groups: []int{tu.Supplement}}
	dir := t.TempDir()
	testuser.OpenDirs(t, dir)
	home := filepath.Join(dir, "home")
	os.Mkdir(home, 0o755)
	os.Chown(home, u.UID, u.GID)
	secret := filepath.Join(dir, "secret")
	write(t, secret, "root only")
	os.Chmod(secret, 0o600)
	log, results := filepath.Join(home, "log"), filepath.Join(home, "results")
	for _, p := range []string{log, results} {
		write(t, p, "mine")
		os.Chown(p, u.UID, u.GID)
	}
	if err := os.Symlink(secret, filepath.Join(home, "link")); err != nil {
		t.Fatal(err)
	}
	pid := holder(t, u, log, results)

	img := filepath.Join(dir, "img")
	// This test's process, root's like a sandbox's init, is passed over:
	// the owner may not even list its files.
	ix, err := Capture(CaptureOptions{Pids: []int{pid, os.Getpid()}, Keep: []string{home}, User: u, Images: img})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ix.Entries {
		if e.Path == secret || strings.Contains(e.Path, "link") {
			t.Fatalf("captured %s through a symbolic link", e.Path)
		}
	}
	if len(ix.Entries) != 2 {
		t.Fatalf("captured %d files, want log and results", len(ix.Entries))
	}
	// --keep naming the root-only file: refused, as the owner.
	if _, err := Capture(CaptureOptions{Keep: []string{secret}, User: u, Images: filepath.Join(dir, "img2")}); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("--keep %s as the owner: %v, want permission denied", secret, err)
	}
	// A forged index that puts a file where the owner may not write.
	ix.Entries[0].Path = filepath.Join(dir, "planted")
	forged, _ := jsonIndent(ix)
	os.WriteFile(filepath.Join(img, DirName, indexName), forged, 0o600)
	if _, _, err := Restore(RestoreOptions{Images: img, User: u, Seq: "1"}); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("restore into a directory of root's: %v, want permission denied", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "planted")); err == nil {
		t.Fatal("the owner's capture was put into a directory of root's")
	}
	// Put back as the owner, the files stay the owner's.
	write(t, results, "changed")
	ix.Entries[0].Path = log
	good, _ := jsonIndent(ix)
	os.WriteFile(filepath.Join(img, DirName, indexName), good, 0o600)
	if _, _, err := Restore(RestoreOptions{Images: img, User: u, Seq: "1"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{log, results} {
		b, _ := os.ReadFile(p)
		st, _ := os.Stat(p)
		if string(b) != "mine" || st.Sys().(*syscall.Stat_t).Uid != uint32(u.UID) {
			t.Errorf("%s after restore: %q, uid %d", p, b, st.Sys().(*syscall.Stat_t).Uid)
		}
	}
	if b, _ := os.ReadFile(secret); !bytes.Equal(b, []byte("root only")) {
		t.Errorf("secret changed: %q", b)
	}
}

func jsonIndent(ix *Index) ([]byte, error) { return json.MarshalIndent(ix, "", " ") }

// TestCapturedOnce: a file two job-nodes hold is captured by the one that
// claims it first; the other records where it is, and leaves it alone at
// restore.
func TestCapturedOnce(t *testing.T) {
	testutil.RequireRoot(t, "reading another process's /proc/PID/fd")
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared")
	os.Mkdir(shared, 0o700)
	log, results := filepath.Join(dir, "shared.dat"), filepath.Join(dir, "results")
	write(t, log, "written by every rank")
	write(t, results, "r")
	pid := holder(t, nil, log, results)
	img0, img1 := filepath.Join(dir, "n0"), filepath.Join(dir, "n1")
	ix0, err := Capture(CaptureOptions{Pids: []int{pid}, Images: img0, Shared: shared, Node: "n0"})
	if err != nil {
		t.Fatal(err)
	}
	ix1, err := Capture(CaptureOptions{Pids: []int{pid}, Images: img1, Shared: shared, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if k := kinds(ix0); k["shared.dat"] != KindContent || k["results"] != KindContent {
		t.Fatalf("n0 captured %v, want both whole", k)
	}
	for _, e := range ix1.Entries {
		if e.Kind != KindElsewhere || e.Owner != "n0" {
			t.Fatalf("n1 captured %s as %s (owner %q), want it left to n0", e.Path, e.Kind, e.Owner)
		}
	}
	if ix1.Bytes != 0 {
		t.Fatalf("n1 copied %d bytes", ix1.Bytes)
	}
	write(t, log, "changed after the checkpoint")
	if _, _, err := Restore(RestoreOptions{Images: img1, Seq: "1"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(log); string(b) != "changed after the checkpoint" {
		t.Fatalf("n1's restore touched the file n0 captured: %q", b)
	}
	if _, _, err := Restore(RestoreOptions{Images: img0, Seq: "1"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(log); string(b) != "written by every rank" {
		t.Fatalf("after n0's restore: %q", b)
	}
}

// TestConcurrentMoveAside: every job-node of a job walks the same --keep
// directory at a restart, at the same time; each later file is moved aside
// once, by one of them, and neither fails.
func TestConcurrentMoveAside(t *testing.T) {
	testutil.RequireRoot(t, "reading another process's /proc/PID/fd")
	for round := 0; round < 20; round++ {
		dir := t.TempDir()
		out := filepath.Join(dir, "out")
		os.Mkdir(out, 0o755)
		write(t, filepath.Join(out, "step-0"), "zero")
		shared := filepath.Join(dir, "shared")
		os.Mkdir(shared, 0o700)
		var imgs []string
		for _, n := range []string{"n0", "n1"} {
			img := filepath.Join(dir, n)
			if _, err := Capture(CaptureOptions{Keep: []string{out}, Images: img, Shared: shared, Node: n}); err != nil {
				t.Fatal(err)
			}
			imgs = append(imgs, img)
		}
		for i := 1; i <= 50; i++ {
			write(t, filepath.Join(out, fmt.Sprintf("step-%d", i)), "later")
		}
		var wg sync.WaitGroup
		moved := make([][]string, 2)
		errs := make([]error, 2)
		for i, img := range imgs {
			wg.Go(func() { _, moved[i], errs[i] = Restore(RestoreOptions{Images: img, Seq: "1"}) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		seen := map[string]bool{}
		for _, m := range append(moved[0], moved[1]...) {
			if seen[m] {
				t.Fatalf("round %d: %s moved twice", round, m)
			}
			seen[m] = true
		}
		if len(seen) != 50 {
			t.Fatalf("round %d: %d files moved aside, want 50", round, len(seen))
		}
		if b, _ := os.ReadFile(filepath.Join(out, "step-0")); string(b) != "zero" {
			t.Fatalf("round %d: step-0 is %q", round, b)
		}
	}
}
