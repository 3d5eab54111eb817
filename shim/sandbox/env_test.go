package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
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
