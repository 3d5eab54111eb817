package pmix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// libpmix can host one PMIx server per process lifetime, so every test runs
// pmixd in a re-executed test binary ("node process"), as production does.

const helperEnv = "TORPOR_PMIX_TEST_NODE"

const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER, <linux/prctl.h>

type helperConfig struct {
	Spec       JobSpec
	Hostname   string   // set in a fresh UTS namespace; empty keeps the host's
	Socket     string   // relay socket; empty means a counting LocalUpstream
	ServerEnv  []string // set in the node process before the PMIx server starts
	ResultPath string
}

type helperResult struct {
	Code   int
	Err    string
	Rank   int
	Cause  string // aborted, signaled, failed, nofinalize, stopped
	Fences uint64
	Modex  uint64
}

func causeOf(err error) string {
	for _, c := range []struct {
		err  error
		name string
	}{{ErrRankAborted, "aborted"}, {ErrRankSignaled, "signaled"}, {ErrRankFailed, "failed"}, {ErrNoFinalize, "nofinalize"}, {ErrJobStopped, "stopped"}} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return ""
}

// helperNodeMain runs one pmixd and writes its result.
func helperNodeMain() int {
	var cfg helperConfig
	b, err := os.ReadFile(os.Getenv(helperEnv))
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper config:", err)
		return 100
	}
	if cfg.Hostname != "" {
		if err := syscall.Sethostname([]byte(cfg.Hostname)); err != nil {
			fmt.Fprintln(os.Stderr, "sethostname:", err)
			return 100
		}
	}
	for _, kv := range cfg.ServerEnv {
		k, v, _ := cutEnv(kv)
		os.Setenv(k, v)
	}
	var up Upstream = &countingUpstream{}
	var relayUp *relayUpstream
	if cfg.Socket != "" {
		relayUp, err = dialRelay(cfg.Socket, cfg.Spec.NodeIndex)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial relay:", err)
			return 100
		}
		up = relayUp
	}
	spec := cfg.Spec
	spec.Stdout, spec.Stderr = os.Stdout, os.Stderr
	spec.ReapOrphans = os.Getpid() == 1
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(spec, up, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "new pmixd:", err)
		return 100
	}
	if relayUp != nil {
		relayUp.d.Store(d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	code, err := d.Run(ctx)
	res := helperResult{Code: code, Rank: -1, Cause: causeOf(err), Fences: d.FenceCount(), Modex: d.modex.Load()}
	if err != nil {
		res.Err = err.Error()
	}
	var je *JobError
	if errors.As(err, &je) {
		res.Rank = je.Rank
	}
	b, _ = json.Marshal(res)
	if werr := os.WriteFile(cfg.ResultPath, b, 0o600); werr != nil {
		fmt.Fprintln(os.Stderr, "write result:", werr)
		return 100
	}
	fmt.Fprintf(os.Stderr, "pmixd node %d: code=%d err=%v fences=%d\n", spec.NodeIndex, code, err, res.Fences)
	return code
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

// nodeProc is a running node process.
type nodeProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	result string
}

// startNode starts a node process for cfg with extra clone flags.
func startNode(t *testing.T, ctx context.Context, cfg helperConfig, cloneflags uintptr, onLine func(string)) *nodeProc {
	t.Helper()
	dir := t.TempDir()
	cfg.ResultPath = filepath.Join(dir, "result.json")
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{on: onLine}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+cfgPath)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node process: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return &nodeProc{cmd: cmd, out: out, result: cfg.ResultPath}
}

// wait waits for the node process and reads its result.
func (n *nodeProc) wait(t *testing.T) helperResult {
	t.Helper()
	err := n.cmd.Wait()
	t.Logf("node process (%v) output:\n%s", err, n.out)
	var res helperResult
	b, rerr := os.ReadFile(n.result)
	if rerr != nil {
		t.Fatalf("node process left no result (exit %v): %v", err, rerr)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("decode result: %v", err)
	}
	if got := n.cmd.ProcessState.ExitCode(); got != res.Code {
		t.Errorf("node process exit code %d, Run returned %d", got, res.Code)
	}
	return res
}
