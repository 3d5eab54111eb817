package pmix

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/pmix/link"
)

// These tests run pmixd through Main in a re-executed test binary, PID 1 of a
// fresh PID namespace as in a sandbox, with its link to a stand-in shim
// (link.Server) in the test process and ranks of bench/workloads/ckptevents.

const mainEnv = "TORPOR_PMIX_TEST_MAIN" // the spec file for Main

// buildCkptEvents compiles bench/workloads/ckptevents.c with Open MPI's
// mpicc once per test binary (into the directory TestMain removes).
func buildCkptEvents(t *testing.T) string {
	t.Helper()
	const key = "ckptevents"
	mpitestMu.Lock()
	defer mpitestMu.Unlock()
	if bin, ok := mpitestBins[key]; ok {
		return bin
	}
	src, err := filepath.Abs("../bench/workloads/ckptevents.c")
	if err != nil {
		t.Fatal(err)
	}
	flags, err := exec.Command("pkg-config", "--cflags", "--libs", "pmix").Output()
	if err != nil {
		t.Fatalf("pkg-config pmix (install libpmix-dev): %v", err)
	}
	if mpitestDir == "" {
		if mpitestDir, err = os.MkdirTemp("", "torpor-pmix-mpitest-"); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(mpitestDir, key)
	args := append([]string{"-O2", "-g", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-o", out, src},
		strings.Fields(string(flags))...)
	if b, err := exec.Command("mpicc", args...).CombinedOutput(); err != nil {
		t.Fatalf("mpicc ckptevents.c: %v\n%s", err, b)
	}
	mpitestBins[key] = out
	return out
}

// countingForwarder is the stand-in shim's coordinator: LocalUpstream with counters.
type countingForwarder struct {
	LocalUpstream
	fences atomic.Int64
}

func (f *countingForwarder) Fence(ctx context.Context, req FenceRequest) ([]byte, error) {
	f.fences.Add(1)
	return f.LocalUpstream.Fence(ctx, req)
}

// shortDir is a temp dir with a path short enough for a unix socket.
func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "torpor-pl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// mainProc is pmixd run through Main.
type mainProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startMain(t *testing.T, ctx context.Context, spec JobSpec) *mainProc {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(t.TempDir(), "spec.json")
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &mainProc{out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	// Fences between local ranks go through the link too, not only inside libpmix.
	p.cmd.Env = append(os.Environ(), mainEnv+"="+specPath, "PMIX_MCA_pmix_server_fence_localonly_opt=0")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start pmixd: %v", err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *mainProc) exitCode(t *testing.T, ctx context.Context) int {
	t.Helper()
	select {
	case <-p.done:
	case <-ctx.Done():
		t.Fatalf("pmixd did not end:\n%s", p.out)
	}
	t.Logf("pmixd output:\n%s", p.out)
	return p.cmd.ProcessState.ExitCode()
}

// waitLines waits until out contains every line in want.
func waitLines(t *testing.T, ctx context.Context, p *mainProc, want ...string) {
	t.Helper()
	for {
		out := p.out.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(out, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("pmixd ended before printing %q:\n%s", missing, out)
		case <-ctx.Done():
			t.Fatalf("no %q in time:\n%s", missing, out)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// optedIn is pmixd's log line for a rank's opt-in to checkpoint events.
func optedIn(rank int) string {
	return fmt.Sprintf("msg=\"rank opted in to checkpoint events\" component=pmixd job=job node=0 rank=%d\n", rank)
}

var checksumRE = regexp.MustCompile(`ckptevents: done iters=\d+ ranks=2 checksum=(0x[0-9a-f]{16})`)

func TestLinkCheckpointEvents(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildCkptEvents(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	const ckpt = "job/000001"
	sums := map[string]string{}
	for _, tc := range []struct {
		name    string
		args    []string
		timeout time.Duration
		// pace is the ranks' sleep between their 500 iterations: they must
		// run on past the prepare, which lasts the whole timeout when a rank
		// does not answer. The checksum does not depend on it.
		pace time.Duration
		// what Prepare must report
		registered, completed int
		laggards              []int
		restore               bool // a new shim takes over, as after a restore elsewhere
	}{
		{name: "registered ranks answer, then restore", registered: 2, completed: 2, restore: true, timeout: 20 * time.Second, pace: 10 * time.Millisecond},
		{name: "ranks that did not register are not waited for", args: []string{"-n"}, timeout: 20 * time.Second, pace: 10 * time.Millisecond},
		// Rank 0 answers after an fsync, in tens of ms; a slow disk must not
		// make it a laggard too.
		{name: "a rank that never answers is a laggard", args: []string{"-q", "1"}, registered: 2, completed: 1, laggards: []int{1}, timeout: 5 * time.Second, pace: 20 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			dir := shortDir(t)
			sock := filepath.Join(dir, "sb", "link.sock")
			fw1 := &countingForwarder{}
			srv1 := link.NewServer(fw1, nil)
			if err := srv1.Listen(sock); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv1.Close() })
			filesDir := filepath.Join(dir, "files")
			if err := os.Mkdir(filesDir, 0o755); err != nil {
				t.Fatal(err)
			}
			argv := append([]string{prog, "-i", "500", "-s", fmt.Sprint(tc.pace.Microseconds()), "-d", filesDir}, tc.args...)
			p := startMain(t, ctx, JobSpec{
				Job: "job", Nodes: []Node{{Hostname: host, Ranks: []int{0, 1}}}, Argv: argv,
				ExtraEnv: []string{"OMPI_MCA_btl=self,vader,tcp", "OMPI_MCA_btl_tcp_if_include=lo"},
				TmpDir:   filepath.Join(dir, "pmixd"), KillGrace: time.Second, Link: sock,
			})
			hello, err := srv1.Connected(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if hello.Job != "job" || hello.Node != 0 || hello.Generation != 0 || hello.PID != 1 {
				t.Errorf("first hello %+v; want job, node 0, generation 0, pid 1", hello)
			}
			waitLines(t, ctx, p, "ckptevents: start ranks=2")
			if tc.registered > 0 {
				// The opt-in travels rank -> libpmix -> pmixd, which logs it.
				waitLines(t, ctx, p, "ckptevents: rank 0 registered\n", "ckptevents: rank 1 registered\n",
					optedIn(0), optedIn(1))
			}
			fencesBefore := fw1.fences.Load()

			res, err := srv1.Prepare(ctx, ckpt, tc.timeout)
			if err != nil {
				t.Fatalf("Prepare: %v\n%s", err, p.out)
			}
			t.Logf("Prepare: %+v (fences through the first shim: %d)", res, fencesBefore)
			if res.Checkpoint != ckpt || res.Registered != tc.registered || res.Completed != tc.completed ||
				fmt.Sprint(res.Laggards) != fmt.Sprint(tc.laggards) && len(tc.laggards)+len(res.Laggards) > 0 {
				t.Errorf("Prepare = %+v; want registered %d, completed %d, laggards %v", res, tc.registered, tc.completed, tc.laggards)
			}
			if fencesBefore < 1 {
				t.Errorf("no fence went through the link before the checkpoint (MPI_Init has two)")
			}
			switch {
			case tc.registered == 0 && res.Elapsed > 2*time.Second:
				t.Errorf("prepare with no registered rank took %v", res.Elapsed)
			case len(tc.laggards) > 0 && res.Elapsed < tc.timeout:
				t.Errorf("prepare with a laggard returned after %v, before its %v timeout", res.Elapsed, tc.timeout)
			}
			// The ranks that answered flushed their files before Prepare returned.
			for r := 0; r < 2; r++ {
				b, _ := os.ReadFile(filepath.Join(filesDir, fmt.Sprintf("ckptevents.%d.log", r)))
				wantLine := tc.registered > 0 // a laggard (-q) flushes too, it only does not answer
				if got := strings.Contains(string(b), "checkpoint "+ckpt+"\n"); got != wantLine {
					t.Errorf("rank %d state file %q: has the checkpoint line = %v, want %v", r, b, got, wantLine)
				}
			}
			// The link is down: pmixd holds no connection to the shim now.
			shortCtx, shortCancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, cerr := srv1.Connected(shortCtx)
			shortCancel()
			if cerr == nil {
				t.Fatalf("pmixd connected again while the shim was not listening")
			}

			fw := fw1
			if tc.restore {
				srv1.Close() // the old shim is gone; a new one serves the same path
				fw = &countingForwarder{}
				srv2 := link.NewServer(fw, nil)
				srv2.SetRestoredFrom(ckpt)
				if err := srv2.Listen(sock); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { srv2.Close() })
				hello, err = srv2.Connected(ctx)
			} else {
				if err := srv1.Resume(); err != nil { // leave-running: the same shim again
					t.Fatal(err)
				}
				hello, err = srv1.Connected(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			if hello.Generation != 1 {
				t.Errorf("hello after re-dial: generation %d, want 1", hello.Generation)
			}
			fencesAfter := fw.fences.Load()
			if tc.restore {
				waitLines(t, ctx, p, "ckptevents: rank 0 restored from "+ckpt+"\n", "ckptevents: rank 1 restored from "+ckpt+"\n")
			}
			if code := p.exitCode(t, ctx); code != 0 {
				t.Fatalf("pmixd exit code %d, want 0", code)
			}
			out := p.out.String()
			if tc.registered > 0 {
				for r := 0; r < 2; r++ {
					if !strings.Contains(out, fmt.Sprintf("ckptevents: rank %d got checkpoint %s\n", r, ckpt)) {
						t.Errorf("rank %d did not log the checkpoint", r)
					}
				}
			} else if strings.Contains(out, "got checkpoint") {
				t.Errorf("a rank that did not register got the checkpoint event")
			}
			if !tc.restore && strings.Contains(out, "restored from") {
				t.Errorf("restored event without a restore")
			}
			if fw.fences.Load() <= fencesAfter {
				t.Errorf("no fence went through the link after the re-dial (MPI_Finalize has one)")
			}
			m := checksumRE.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no checksum line")
			}
			sums[tc.name] = m[1]
			assertNoChildren(t)
		})
	}
	var first string
	for name, sum := range sums {
		if first == "" {
			first = sum
		}
		if sum != first {
			t.Errorf("checksums differ across runs: %v (%s)", sums, name)
		}
	}
	t.Logf("checksums: %v", sums)
}
