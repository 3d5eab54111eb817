package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestInit: the sandbox's PID 1 is initearly.c's, not a Go runtime: one
// thread, no environment, "/" as its working directory, nothing open but
// its standard descriptors once the command runs, and the command gets none
// but those either. The command's status
// reaches ExitErr and the exit file, 128+N for a command killed by signal
// N, and an output the init cannot open makes Start fail, saying so.
func TestInit(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	dir := t.TempDir()

	s := e.sandbox(1, 1, false)
	out, exitFile, stop := filepath.Join(dir, "a.out"), filepath.Join(dir, "a.exit"), filepath.Join(dir, "stop")
	// A descriptor without close-on-exec, as a shim's parent may leave it
	// one: it must reach neither the init nor the command (ls's own
	// listing is its 3).
	leak, err := unix.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(leak)
	script := `echo $(ls /proc/self/fd); while [ ! -e ` + stop + ` ]; do sleep 0.05; done; exit 7`
	if err := s.Start(ctx, Process{Argv: []string{"/bin/sh", "-c", script}, Output: out, ExitFile: exitFile}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the command", 20*time.Second, func() bool { b, _ := os.ReadFile(out); return strings.HasSuffix(string(b), "\n") })
	if b, _ := os.ReadFile(out); string(b) != "0 1 2 3\n" {
		t.Errorf("the command's descriptors: %q, want 0 1 2 (and ls's 3)", b)
	}
	pid := s.Pid()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if th := statusFields(string(st))["Threads"]; th != "1" {
		t.Errorf("the init has %s threads, want 1 (a Go runtime has several)", th)
	}
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil || len(env) != 0 {
		t.Errorf("the init's environment: %q %v, want none", env, err)
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || cwd != "/" {
		t.Errorf("the init's working directory: %q %v, want /", cwd, err)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, fd := range fds {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		open = append(open, fd.Name()+"="+l)
	}
	if !slices.Equal(open, []string{"0=/dev/null", "1=/dev/null", "2=/dev/null"}) {
		t.Errorf("the init holds descriptors %v, want 0 1 2", open)
	}
	if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.HasPrefix(string(cmd), initArg0+"\x00") {
		t.Errorf("the init's command line: %q", cmd)
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tree to exit", 20*time.Second, func() bool { return s.State() == Exited })
	var ee *exec.ExitError
	if err := s.ExitErr(); !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("tree ended with %v, want exit status 7", err)
	}
	if b, err := os.ReadFile(exitFile); err != nil || string(b) != "7\n" {
		t.Errorf("exit file: %q %v, want 7", b, err)
	}

	k := e.sandbox(1, 2, false)
	kexit := filepath.Join(dir, "k.exit")
	if err := k.Start(ctx, Process{Argv: []string{"/bin/sh", "-c", "kill -TERM $$"}, ExitFile: kexit}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed tree to exit", 20*time.Second, func() bool { return k.State() == Exited })
	if b, err := os.ReadFile(kexit); err != nil || string(b) != "143\n" {
		t.Errorf("exit file of a command killed by SIGTERM: %q %v, want 143", b, err)
	}

	f := e.sandbox(1, 3, false)
	bad := filepath.Join(dir, "no-such-dir", "out")
	err = f.Start(ctx, Process{Argv: []string{"/bin/true"}, Output: bad})
	if want := "open output: open " + bad + ": no such file or directory"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Start with an output the init cannot open: %v, want %q", err, want)
	}
}
