package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/internal/testuser"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// as is the credential to run the CLI as u.
func as(u *testuser.User) *syscall.Credential {
	return &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: []uint32{uint32(u.GID), uint32(u.Supplement)}}
}

// TestJobsRunAsTheirOwner: through the daemons, as a user the test creates,
// a job runs with that user's uid and groups and cannot do what the user
// cannot; a working directory or program the user may not use is refused;
// another user can neither see nor touch the job or its checkpoints.
func TestJobsRunAsTheirOwner(t *testing.T) {
	// Users first: their removal then runs after the cluster's, once no
	// process of theirs is left.
	alice, bob := testuser.New(t), testuser.New(t)
	c := newCluster(t, 3)
	pwned := "/etc/torpor-pwned-" + alice.Name

	// 1. The experiment of the issue: id, and a write to /etc.
	out, code := c.cliAs(as(alice), "run", "--plain", "--host", "h1", "--run-dir", c.runDir, "--",
		"/bin/sh", "-c", "id -u; id -G; touch "+pwned+" && echo WROTE-ETC; true")
	t.Logf("alice's id job: exit %d\n%s", code, out)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("\n%d\n", alice.UID)) && !strings.HasPrefix(out, fmt.Sprintf("%d\n", alice.UID)) {
		t.Fatalf("the job did not print alice's uid %d (exit %d)", alice.UID, code)
	}
	if !strings.Contains(out, fmt.Sprint(alice.Supplement)) || !strings.Contains(out, "Permission denied") {
		t.Fatalf("the job lacks alice's groups or could write /etc")
	}
	if _, err := os.Stat(pwned); err == nil || strings.Contains(out, "WROTE-ETC") {
		os.Remove(pwned)
		t.Fatal("alice's job wrote to /etc")
	}

	// -x LD_PRELOAD reaches the job, which still runs as alice.
	out, code = c.cliAs(as(alice), "run", "--plain", "--host", "h2", "--run-dir", c.runDir,
		"-x", "LD_PRELOAD=/nonexistent/torpor-preload.so", "--", "/usr/bin/id", "-u")
	if code != 0 || !strings.Contains(out, fmt.Sprint(alice.UID)) || !strings.Contains(out, "torpor-preload.so") {
		t.Fatalf("LD_PRELOAD job: exit %d\n%s", code, out)
	}

	// A daemon never takes a directory from a client: --checkpoint-dir and
	// --run-dir other than the daemons' own are refused, naming theirs.
	elsewhere := filepath.Join(c.dir, "elsewhere")
	for _, tc := range []struct{ flag, want string }{{"--checkpoint-dir", c.ckpt}, {"--run-dir", c.runDir}} {
		args := []string{"run", "--plain", "--host", "h1", tc.flag, elsewhere, "--", "/bin/true"}
		out, code := c.cliAs(as(alice), args...)
		if code == 0 || !strings.Contains(out, tc.flag+" "+elsewhere) || !strings.Contains(out, tc.want) {
			t.Fatalf("%s %s: exit %d\n%s", tc.flag, elsewhere, code, out)
		}
		t.Logf("%s refused: %s", tc.flag, lastLines(strings.TrimSpace(out), 1))
	}
	if _, err := os.Stat(elsewhere); err == nil {
		t.Fatalf("%s was created", elsewhere)
	}

	// 6. Links planted in the run directory before a start: at the output
	// and exit-status paths of the job-node to come, pointing at a file of
	// root's. Only root can write there (alice cannot even try); the shim
	// replaces them instead of writing through them.
	sentinel := c.sentinel()
	jobDir := filepath.Join(c.runDir, "jobs", "planted")
	if err := os.MkdirAll(jobDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"n0.out", "n0.out.exit", "n0.out.restore"} {
		if err := os.Symlink(sentinel, filepath.Join(jobDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if out, code := c.runAs(alice, "/bin/sh", "-c", "echo x > "+filepath.Join(jobDir, "mine")); code == 0 {
		t.Fatalf("alice could write in the job's run directory:\n%s", out)
	}
	out, code = c.cliAs(as(alice), "run", "--plain", "--name", "planted", "--host", "h1", "--run-dir", c.runDir, "--", "/bin/echo", "hello")
	if code != 0 || !strings.Contains(out, "hello") {
		t.Fatalf("job over planted links: exit %d\n%s", code, out)
	}
	c.checkSentinel(sentinel)
	if st, err := os.Lstat(filepath.Join(jobDir, "n0.out")); err != nil || !st.Mode().IsRegular() || st.Sys().(*syscall.Stat_t).Uid != uint32(alice.UID) {
		t.Fatalf("n0.out after the start: %v, %v; want a regular file of alice's", st.Mode(), err)
	}

	// 3. A working directory and a program alice may not use.
	secret := filepath.Join(c.dir, "root-only.sh")
	if err := os.WriteFile(secret, []byte("#!/bin/sh\necho RAN\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"--wdir /root", []string{"--wdir", "/root", "--", "/bin/true"}, "/root"},
		{"a program only root may run", []string{"--", secret}, secret},
	} {
		args := append([]string{"run", "--plain", "--host", "h1", "--run-dir", c.runDir}, tc.args...)
		out, code := c.cliAs(as(alice), args...)
		if code == 0 || !strings.Contains(strings.ToLower(out), "permission denied") || !strings.Contains(out, tc.want) || strings.Contains(out, "RAN") {
			t.Fatalf("%s: exit %d\n%s", tc.name, code, out)
		}
		t.Logf("%s refused: %s", tc.name, lastLines(strings.TrimSpace(out), 1))
	}

	// 4. Another user's job and checkpoints.
	stop := filepath.Join(c.dir, "stop-alice")
	job := c.userJob(alice, "alice", "h1,h2", fmt.Sprintf("while [ ! -e %s ]; do sleep 0.1; done", stop))
	ckpt := lastLines(c.mustCLIAs(alice, "checkpoint", job), 1)
	if !strings.HasPrefix(ckpt, job+"/") {
		t.Fatalf("alice's checkpoint printed %q", ckpt)
	}
	if ps := c.mustCLIAs(bob, "ps"); strings.Contains(ps, job) {
		t.Fatalf("bob sees alice's job:\n%s", ps)
	}
	if ls := c.mustCLIAs(bob, "ls"); strings.Contains(ls, job) {
		t.Fatalf("bob sees alice's checkpoints:\n%s", ls)
	}
	if ps := c.mustCLI("ps"); !strings.Contains(ps, alice.Name) {
		t.Fatalf("ps does not name the owner %s:\n%s", alice.Name, ps)
	}
	for _, verb := range [][]string{
		{"checkpoint", job}, {"suspend", job}, {"resume", job}, {"cancel", job}, {"wait", job},
		{"migrate", job, "--node", "n0", "--to", "h3"}, {"restart", ckpt}, {"restart", job}, {"ls", job},
	} {
		out, code := c.cliAs(as(bob), verb...)
		if code == 0 || !strings.Contains(out, "permission denied") {
			t.Fatalf("bob: torpor %s: exit %d\n%s", strings.Join(verb, " "), code, out)
		}
	}
	if st := c.jobState(job); st != "running" {
		t.Fatalf("alice's job is %s after bob's attempts", st)
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitState(job, "finished", 30*time.Second)
}

// userJob starts a plain job of u running script on hosts, waits until it
// runs and returns its id.
func (c *cluster) userJob(u *testuser.User, name, hosts, script string) string {
	c.t.Helper()
	cmd := c.daemonAs(as(u), "run-"+name, "run", "--plain", "--name", name, "--host", hosts, "--run-dir", c.runDir, "--", "/bin/sh", "-c", script)
	c.t.Cleanup(func() { stop(cmd, syscall.SIGTERM) })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if job := c.findJob(name); job != "" {
			return job
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("job %s never started:\n%s", name, c.logs["run-"+name])
		}
	}
}

func (c *cluster) mustCLIAs(u *testuser.User, args ...string) string {
	c.t.Helper()
	out, code := c.cliAs(as(u), args...)
	if code != 0 {
		c.t.Fatalf("torpor %s as %s: exit %d\n%s", strings.Join(args, " "), u.Name, code, out)
	}
	return out
}

// TestMPIAsUser: an Open MPI and an MPICH 4.2 job of a user the test creates go
// through a checkpoint, a restart on other hosts and a migration, and end
// with the undisturbed checksum; before and after each restore every rank
// and pmixd runs as that user (only each job-node's init is root).
func TestMPIAsUser(t *testing.T) {
	alice := testuser.New(t) // before the cluster: removed after it
	c := newCluster(t, 4)
	progs := []struct {
		name, mpirun, bin string
		hangOK            string
	}{
		{"uring", "mpirun.openmpi", "ring.openmpi", ""},
		{"uringmpich", "mpirun.mpich", "ring.mpich42", ""},
	}
	args := []string{"-i", "300", "-m", "16", "-s", "20000", "-p", "25"}
	for _, p := range progs {
		t.Run(p.name, func(t *testing.T) {
			c.t = t
			// A copy alice can reach whatever the checkout's directories allow.
			bin := filepath.Join(c.dir, p.bin)
			data, err := os.ReadFile(workload(t, p.bin))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(bin, data, 0o755); err != nil {
				t.Fatal(err)
			}
			want := reference(t, p.mpirun, 4, bin, args...)
			j := c.runMPIAs(alice, p.name, 4, "h1:2,h2:2", bin, args...)
			j.progress("started")
			c.assertRanksAre(alice, j.id, "started", 4)
			h := lastLines(c.mustCLIAs(alice, "checkpoint", j.id), 1)
			j.progress("checkpoint " + h)
			h = lastLines(c.mustCLIAs(alice, "suspend", j.id), 1)
			// 6. Alice replaces every file in her job-nodes' shared
			// directories with a link to a file of root's, and adds one:
			// the restore puts regular files back, owned by her, and
			// follows none of the links.
			sentinel := c.sentinel()
			planted := 0
			for _, n := range []string{"n0", "n1"} {
				for _, d := range []string{".shm", ".pmix"} {
					dir := filepath.Join(c.runDir, "jobs", j.id, n+d)
					out, code := c.runAs(alice, "/bin/sh", "-c", `cd "$1" && for f in $(find . -type f); do ln -sf "$2" "$f"; done; ln -s "$2" planted; find . -type l | wc -l`, "sh", dir, sentinel)
					if code != 0 {
						t.Fatalf("plant links in %s: exit %d\n%s", dir, code, out)
					}
					var k int
					fmt.Sscan(out, &k)
					planted += k
				}
			}
			t.Logf("alice planted %d links to %s", planted, sentinel)
			c.mustCLIAs(alice, "restart", h, "--host", "n0=h3", "--host", "n1=h4")
			c.checkSentinel(sentinel)
			j.progress("restart on h3,h4")
			c.assertRanksAre(alice, j.id, "restored on h3,h4", 4)
			c.mustCLIAs(alice, "migrate", j.id, "--node", "n1", "--to", "h1")
			j.progress("migrate n1 to h1")
			c.assertRanksAre(alice, j.id, "migrated to h1", 4)
			got := j.finish(3*time.Minute, p.hangOK)
			t.Logf("%s as %s: checksum %s under torpor, %s undisturbed", p.name, alice.Name, got, want)
			if got != want {
				t.Fatalf("%s ended with checksum %s, the undisturbed run with %s", p.name, got, want)
			}
		})
	}
}

// runAs runs a command as u and returns its output and exit code.
func (c *cluster) runAs(u *testuser.User, name string, args ...string) (string, int) {
	c.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as(u)}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return string(out), 0
}

// sentinelText is what a sentinel file of root's holds.
const sentinelText = "root's secret, mode 0600\n"

// sentinel makes a file of root's, mode 0600, in the cluster's directory:
// what a planted link points at instead of /etc/shadow.
func (c *cluster) sentinel() string {
	c.t.Helper()
	p := filepath.Join(c.dir, "sentinel")
	if err := os.WriteFile(p, []byte(sentinelText), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// checkSentinel fails unless the sentinel is unchanged: root's, 0600, with
// its text.
func (c *cluster) checkSentinel(p string) {
	c.t.Helper()
	st, err := os.Lstat(p)
	data, _ := os.ReadFile(p)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 0 || string(data) != sentinelText {
		c.t.Fatalf("root's file %s was changed through a planted link: %v %v %q", p, st.Mode(), err, data)
	}
}

// runMPIAs starts an MPI job as user u.
func (c *cluster) runMPIAs(u *testuser.User, name string, np int, hosts string, prog string, args ...string) *mpiJob {
	c.t.Helper()
	return c.startMPI(as(u), nil, name, np, hosts, prog, args...)
}

// assertRanksAre checks /proc/PID/status of every process of every
// job-node of job: each runs as u (real, effective, saved and fs uid and
// gid) with no capability, except each job-node's init (PID 1 of its
// namespace), which is root. At least min such processes must be found:
// the ones the job keeps for its whole life (a shell's short-lived children
// come and go, so they are checked when seen but not counted on).
func (c *cluster) assertRanksAre(u *testuser.User, job, when string, min int) {
	c.t.Helper()
	ids := fmt.Sprint(u.UID)
	gids := fmt.Sprint(u.GID)
	tasks := c.jobTasks(job)
	for _, t := range tasks {
		f := t.status
		if f["Uid"] != strings.Repeat(ids+" ", 3)+ids || f["Gid"] != strings.Repeat(gids+" ", 3)+gids || f["CapEff"] != "0000000000000000" || f["CapPrm"] != "0000000000000000" {
			c.t.Fatalf("%s: process %s (%s) of job %s: Uid %q Gid %q CapEff %s CapPrm %s, want %s's without capabilities",
				when, t.pid, f["Name"], job, f["Uid"], f["Gid"], f["CapEff"], f["CapPrm"], u.Name)
		}
	}
	if len(tasks) < min {
		c.t.Fatalf("%s: only %d processes of job %s found, want at least %d", when, len(tasks), job, min)
	}
	c.t.Logf("%s: %d processes of job %s run as %s (uid %d)", when, len(tasks), job, u.Name, u.UID)
}

// TestForgedCredentialsRefused: a user's checkpoint whose images were edited
// so that a task of the job would come back as root, and whose manifests
// were signed again with the coordinator's key (so the HMAC check passes),
// is refused by the shim's credentials check before CRIU runs; the job stays
// suspended and restarts from its intact checkpoint.
func TestForgedCredentialsRefused(t *testing.T) {
	alice := testuser.New(t) // before the cluster: removed after it
	c := newCluster(t, 2)
	stop := filepath.Join(c.dir, "stop-forged")
	job := c.userJob(alice, "forged", "h1,h2", fmt.Sprintf("while [ ! -e %s ]; do sleep 0.1; done", stop))
	good := lastLines(c.mustCLIAs(alice, "checkpoint", job), 1)
	bad := lastLines(c.mustCLIAs(alice, "suspend", job), 1)
	nodeDir := filepath.Join(c.ckpt, bad, "nodes", "n1")
	// The first task that is not the init: the command, /bin/sh.
	creds, err := criu.ReadCreds(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	tid := 0
	for _, cr := range creds {
		if !cr.Root {
			tid = cr.Tid
			break
		}
	}
	if tid == 0 {
		t.Fatalf("no task of alice's in %s", nodeDir)
	}
	forgeRoot(t, filepath.Join(nodeDir, fmt.Sprintf("core-%d.img", tid)))
	resign(t, filepath.Join(c.ckpt, bad), filepath.Join(c.state, "catalog.key"), "n1")
	if ls := c.mustCLIAs(alice, "ls", job); !strings.Contains(ls, bad) || !strings.Contains(lastLines(grepLine(ls, bad), 1), "ok") {
		t.Fatalf("the re-signed checkpoint does not verify, so the test proves nothing:\n%s", ls)
	}
	for _, who := range []*syscall.Credential{as(alice), nil} {
		out, code := c.cliAs(who, "restart", bad)
		if code == 0 || !strings.Contains(out, "would be restored as uids [0 0 0 0]") {
			t.Fatalf("restart of a checkpoint forged to hold root: exit %d\n%s", code, out)
		}
		t.Logf("refused: %s", lastLines(strings.TrimSpace(out), 1))
	}
	if st := c.jobState(job); st != "suspended" {
		t.Fatalf("job is %s after the refused restart, want suspended", st)
	}
	c.mustCLIAs(alice, "restart", good)
	// Each job-node's shell lives throughout; its `sleep 0.1` may be
	// between one child and the next when the processes are read.
	c.assertRanksAre(alice, job, "restarted from "+good, 2)
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitState(job, "finished", 30*time.Second)
}

func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// forgeRoot rewrites a core image so that its thread comes back as root with
// every capability.
func forgeRoot(t *testing.T, path string) {
	t.Helper()
	im, err := criu.ReadImage(path)
	if err != nil {
		t.Fatal(err)
	}
	var core criu_core.CoreEntry
	if err := proto.Unmarshal(im.Entries[0], &core); err != nil {
		t.Fatal(err)
	}
	cr := core.GetThreadCore().GetCreds()
	zero := uint32(0)
	cr.Uid, cr.Euid, cr.Suid, cr.Fsuid = &zero, &zero, &zero, &zero
	cr.Gid, cr.Egid, cr.Sgid, cr.Fsgid = &zero, &zero, &zero, &zero
	for i := range cr.CapPrm {
		cr.CapPrm[i], cr.CapEff[i] = ^uint32(0), ^uint32(0)
	}
	if im.Entries[0], err = proto.Marshal(&core); err != nil {
		t.Fatal(err)
	}
	if err := im.Write(path); err != nil {
		t.Fatal(err)
	}
}

// resign writes node's manifest again and signs the job manifest of the
// checkpoint in dir with the key, as somebody holding the key could.
func resign(t *testing.T, dir, keyPath, node string) {
	t.Helper()
	key, err := catalog.LoadOrCreateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	nm, err := catalog.WriteNodeManifest(context.Background(), filepath.Join(dir, "nodes", node))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "nodes", node, catalog.NodeManifestName))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, catalog.JobManifestName))
	if err != nil {
		t.Fatal(err)
	}
	m, err := catalog.ParseJobManifest(data, key)
	if err != nil {
		t.Fatal(err)
	}
	m.TotalBytes = 0
	for i := range m.Nodes {
		if m.Nodes[i].Name == node {
			sum := sha256.Sum256(raw)
			m.Nodes[i].ManifestSHA256, m.Nodes[i].TotalBytes, m.Nodes[i].FileCount = hex.EncodeToString(sum[:]), nm.TotalBytes, len(nm.Files)
		}
		m.TotalBytes += m.Nodes[i].TotalBytes
	}
	payload, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(payload)
	env, err := json.Marshal(map[string]any{"format": m.Format, "hmac": hex.EncodeToString(mac.Sum(nil)), "payload": json.RawMessage(payload)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, catalog.JobManifestName), env, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rawClientEnv, set to the coordinator's socket, makes the test binary a
// hand-made API client (rawClient) instead of running tests.
const rawClientEnv = "TORPOR_E2E_RAW_CLIENT"

// rawRequests are requests the CLI would never send, each named.
func rawRequests() []struct {
	name string
	spec *apiv1.JobSpec
} {
	node := func(name, host string, argv []string, env ...string) *apiv1.NodeSpec {
		return &apiv1.NodeSpec{Name: name, Host: host, Argv: argv, Env: env}
	}
	ok := []string{"/bin/true"}
	many := make([]*apiv1.NodeSpec, 5000)
	for i := range many {
		many[i] = node(fmt.Sprintf("n%d", i), "h1", ok)
	}
	return []struct {
		name string
		spec *apiv1.JobSpec
	}{
		{"job id with a path", &apiv1.JobSpec{Id: "../../etc", Nodes: []*apiv1.NodeSpec{node("n0", "h1", ok)}}},
		{"job-node name with a path", &apiv1.JobSpec{Id: "raw1", Nodes: []*apiv1.NodeSpec{node("n0/../x", "h1", ok)}}},
		{"host with a shell", &apiv1.JobSpec{Id: "raw2", Nodes: []*apiv1.NodeSpec{node("n0", "h1;rm -rf /", ok)}}},
		{"no job-nodes", &apiv1.JobSpec{Id: "raw3"}},
		{"5000 job-nodes", &apiv1.JobSpec{Id: "raw4", Nodes: many}},
		{"70000 arguments", &apiv1.JobSpec{Id: "raw5", Nodes: []*apiv1.NodeSpec{node("n0", "h1", make([]string, 70000))}}},
		{"a 200 KiB argument", &apiv1.JobSpec{Id: "raw6", Nodes: []*apiv1.NodeSpec{node("n0", "h1", []string{"/bin/echo", strings.Repeat("x", 200<<10)})}}},
		{"environment without =", &apiv1.JobSpec{Id: "raw7", Nodes: []*apiv1.NodeSpec{node("n0", "h1", ok, "NOEQUALS")}}},
		{"a NUL byte", &apiv1.JobSpec{Id: "raw8", Nodes: []*apiv1.NodeSpec{node("n0", "h1", []string{"/bin/true\x00x"})}}},
		{"relative working directory", &apiv1.JobSpec{Id: "raw9", Nodes: []*apiv1.NodeSpec{{Name: "n0", Host: "h1", Argv: ok, Dir: "tmp"}}}},
		{"credentials of root", &apiv1.JobSpec{Id: "raw10", Owner: 0, Nodes: []*apiv1.NodeSpec{{Name: "n0", Host: "h1", Argv: []string{"/usr/bin/id", "-u"}, User: &apiv1.Creds{}}}}},
	}
}

// rawClient sends rawRequests to the coordinator at sock and prints one
// line per request: its name, a tab, and the error or "started <owner>".
func rawClient(sock string) int {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(coordinator.PeerCredentials{}))
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	defer conn.Close()
	cl := apiv1.NewCoordinatorClient(conn)
	for _, r := range rawRequests() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		j, err := cl.Run(ctx, &apiv1.RunRequest{Spec: r.spec}, grpc.MaxCallSendMsgSize(64<<20))
		cancel()
		if err != nil {
			fmt.Printf("%s\t%s\n", r.name, strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Printf("%s\tstarted owner=%d user=%v\n", r.name, j.Spec.GetOwner(), j.Spec.GetNodes()[0].GetUser())
	}
	return 0
}

// TestHandMadeRequests: requests the CLI would never send, built by hand
// and sent by a user the test creates, get the server's clear refusals;
// a request claiming root's credentials runs as its sender.
func TestHandMadeRequests(t *testing.T) {
	alice := testuser.New(t) // before the cluster: removed after it
	c := newCluster(t, 1)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(c.dir, "e2e-raw-client")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{rawClientEnv + "=" + c.socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as(alice)}
	out, err := cmd.CombinedOutput()
	t.Logf("as %s:\n%s", alice.Name, out)
	if err != nil {
		t.Fatalf("raw client: %v", err)
	}
	want := map[string]string{
		"job id with a path":         `job id "../../etc": use 1 to 63 letters, digits`,
		"job-node name with a path":  `job-node name "n0/../x": use 1 to 63 letters, digits`,
		"host with a shell":          `host name "h1;rm -rf /": use 1 to 63 letters, digits`,
		"no job-nodes":               "job raw3 has no job-nodes",
		"5000 job-nodes":             "has 5000 job-nodes, at most 4096 are allowed",
		"70000 arguments":            "the command has 70000 strings, at most 65536 are allowed",
		"a 200 KiB argument":         "command string 1 is 204800 bytes, at most 131072 are allowed",
		"environment without =":      `environment string "NOEQUALS" is not NAME=value`,
		"a NUL byte":                 "command string 0 holds a NUL byte",
		"relative working directory": `working directory "tmp" is not absolute`,
		"credentials of root":        fmt.Sprintf("started owner=%d user=uid:%d", alice.UID, alice.UID),
	}
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(l, "\t"); ok {
			lines[k] = v
		}
	}
	for name, w := range want {
		if got := lines[name]; !strings.Contains(got, w) {
			t.Errorf("%s: got %q, want it to say %q", name, got, w)
		}
	}
}
