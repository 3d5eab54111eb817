package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testuser"
)

// TestCommandEnv: the command gets exactly the Process's environment, and
// none when it is nil; nothing of the shim's (this test's) is passed on.
func TestCommandEnv(t *testing.T) {
	t.Setenv("TORPOR_TEST_SHIM_SECRET", "not-for-jobs")
	e := newEnv(t, 1)
	for i, tc := range []struct {
		env  []string
		want string
	}{
		{nil, ""},
		{[]string{"A=1", "B=two words"}, "A=1\nB=two words\n"},
	} {
		s := e.sandbox(1, i+1, false)
		out := filepath.Join(e.dir, "env.out")
		os.Remove(out)
		if err := s.Start(context.Background(), Process{Argv: []string{"/usr/bin/env"}, Env: tc.env, Output: out}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "env to exit", 20*time.Second, func() bool { return s.State() == Exited })
		if err := s.ExitErr(); err != nil {
			t.Fatalf("env: %v", err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("Env %q: the command's environment is %q, want %q", tc.env, got, tc.want)
		}
	}
}

// TestOwnersEnvNotAsRoot: the owner's environment reaches the command, and
// nothing that runs as root before it: an LD_PRELOAD of the job's is loaded
// into the command (as the owner), never into the command's process while
// it is still root (execearly.c starts with no environment).
func TestOwnersEnvNotAsRoot(t *testing.T) {
	u := testuser.New(t) // before the cluster: removed after it
	e := newEnv(t, 1)
	testuser.OpenDirs(t, e.dir)
	src, lib := filepath.Join(e.dir, "mark.c"), filepath.Join(e.dir, "mark.so")
	code := "#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void mark(void) { dprintf(2, \"preload euid=%d\\n\", (int)geteuid()); }\n"
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, src).CombinedOutput(); err != nil {
		t.Fatalf("compile the preload (gcc comes with make deps' build-essential): %v\n%s", err, out)
	}
	usr := &User{UID: u.UID, GID: u.GID, Groups: []int{u.GID}}
	out := filepath.Join(e.dir, "preload.out")
	if err := CreateOwned(out, usr, 0o600); err != nil {
		t.Fatal(err)
	}
	s := e.sandbox(1, 1, false)
	if err := s.Start(context.Background(), Process{Argv: []string{"/bin/true"}, Env: []string{"LD_PRELOAD=" + lib}, Output: out, User: usr}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "true to exit", 20*time.Second, func() bool { return s.State() == Exited })
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), fmt.Sprintf("preload euid=%d\n", u.UID)) {
		t.Fatalf("the job's LD_PRELOAD did not reach its command: output %q", got)
	}
	if strings.Contains(string(got), "preload euid=0\n") {
		t.Fatalf("the job's LD_PRELOAD ran as root: output %q", got)
	}
}
