package pmix

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperNodeMain())
	}
	if spec := os.Getenv(mainEnv); spec != "" {
		os.Exit(Main(context.Background(), []string{"--spec", spec, "--log-level", "debug"}, os.Stdout, os.Stderr))
	}
	// Orphaned ranks re-parent to the test process, so a leak is visible.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		fmt.Fprintln(os.Stderr, "set child subreaper:", errno)
		os.Exit(2)
	}
	code := m.Run()
	if mpitestDir != "" {
		os.RemoveAll(mpitestDir)
	}
	os.Exit(code)
}

func oneNodeConfig(t *testing.T, job string, n int, argv ...string) helperConfig {
	t.Helper()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	ranks := make([]int, n)
	for i := range ranks {
		ranks[i] = i
	}
	return helperConfig{Spec: JobSpec{
		Job:       job,
		Nodes:     []Node{{Hostname: host, Ranks: ranks}},
		Argv:      argv,
		ExtraEnv:  []string{"OMPI_MCA_btl=self,vader,tcp", "OMPI_MCA_btl_tcp_if_include=lo"},
		TmpDir:    t.TempDir(),
		TagOutput: true,
		KillGrace: time.Second,
	}}
}

// assertNoChildren fails on, and then kills and reaps, any process left
// behind (the test process is a child subreaper).
func assertNoChildren(t *testing.T) {
	t.Helper()
	kids := childrenOf(t, os.Getpid())
	if len(kids) == 0 {
		return
	}
	t.Errorf("processes left behind: %v", kids)
	for _, k := range kids {
		pid, _ := strconv.Atoi(strings.Fields(k)[0])
		_ = syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
	}
}

// wantRanksOK fails the test unless out, a node's tagged output for job, has
// the ok line of each of the 4 ranks of the test program on one node.
func wantRanksOK(t *testing.T, out, job string) {
	t.Helper()
	for r := 0; r < 4; r++ {
		want := fmt.Sprintf("[%s,%d]<stdout>: rank %d of 4 ok sum=10 left=%d", job, r, r, (r+3)%4)
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func TestRunOneNode(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildMPITest(t)
	for _, tc := range []struct {
		name       string
		serverEnv  []string
		wantFences bool
	}{
		{name: "library completes local fences"},
		{name: "fences through torpor", serverEnv: []string{"PMIX_MCA_pmix_server_fence_localonly_opt=0"}, wantFences: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cfg := oneNodeConfig(t, "t1job", 4, prog)
			cfg.ServerEnv = tc.serverEnv
			res := startNode(t, ctx, cfg, 0, nil).wait(t)
			if res.Code != 0 || res.Err != "" {
				t.Fatalf("Run = %d, %q; want 0", res.Code, res.Err)
			}
			t.Logf("fences through the upstream: %d", res.Fences)
			if tc.wantFences && res.Fences < 1 {
				t.Errorf("no fence reached the upstream with fence_localonly_opt=0")
			}
			assertNoChildren(t)
		})
	}
}

func TestRunOneNodeOutput(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildMPITest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n := startNode(t, ctx, oneNodeConfig(t, "t1out", 4, prog), 0, nil)
	if res := n.wait(t); res.Code != 0 {
		t.Fatalf("Run = %d, %q", res.Code, res.Err)
	}
	out := n.out.String()
	wantRanksOK(t, out, "t1out")
	if c := countLines(out, " ok sum=10"); c != 4 {
		t.Errorf("%d ok lines, want 4", c)
	}
	assertNoChildren(t)
}

func TestRunAbort(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildMPITest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	n := startNode(t, ctx, oneNodeConfig(t, "t3abort", 4, prog, "abort", "2", "7"), 0, nil)
	res := n.wait(t)
	t.Logf("after %v: %+v", time.Since(start).Round(time.Millisecond), res)
	if res.Code != 7 {
		t.Errorf("exit code %d, want 7", res.Code)
	}
	if res.Rank != 2 || res.Cause != "aborted" || !strings.Contains(res.Err, "rank 2 called MPI_Abort") {
		t.Errorf("result %+v: want rank 2, cause aborted", res)
	}
	assertNoChildren(t)
}

func TestRunRankKilled(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildMPITest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	pids := make(chan int, 1)
	onLine := func(l string) {
		// "[t3kill,1]<stdout>: rank 1 pid 1234 sleeping"
		if i := strings.Index(l, "rank 1 pid "); i >= 0 && strings.HasSuffix(l, "sleeping") {
			f := strings.Fields(l[i:])
			if pid, err := strconv.Atoi(f[3]); err == nil {
				select {
				case pids <- pid:
				default:
				}
			}
		}
	}
	n := startNode(t, ctx, oneNodeConfig(t, "t3kill", 4, prog, "sleep", "1"), 0, onLine)
	select {
	case pid := <-pids:
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill rank 1 (pid %d): %v", pid, err)
		}
	case <-ctx.Done():
		t.Fatalf("rank 1 never slept:\n%s", n.out)
	}
	res := n.wait(t)
	if res.Code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code %d, want %d", res.Code, 128+int(syscall.SIGKILL))
	}
	if res.Rank != 1 || res.Cause != "signaled" || !strings.Contains(res.Err, "rank 1") || !strings.Contains(res.Err, "killed by signal 9") {
		t.Errorf("result %+v: want rank 1 killed by signal 9", res)
	}
	assertNoChildren(t)
}
