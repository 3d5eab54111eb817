package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testuser"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// TestStartAsUser: the command of a tree started for a user runs with the
// user's uid, gid and groups, no capability and no_new_privs; it cannot
// write where the user cannot, and a working directory or a program the
// user may not use makes Start fail, saying so. The init stays root (see
// initearly.c) and runs nothing of the user's.
func TestStartAsUser(t *testing.T) {
	u := testuser.New(t) // before the cluster: removed after it
	e := newEnv(t, 1)
	usr := &User{UID: u.UID, GID: u.GID, Groups: []int{u.GID, u.Supplement}}
	testuser.OpenDirs(t, e.dir)
	ctx := context.Background()

	s := e.sandbox(1, 1, false)
	out := filepath.Join(e.dir, "user.out")
	if err := CreateOwned(out, usr, 0o600); err != nil {
		t.Fatal(err)
	}
	exitFile := out + ".exit"
	stop := filepath.Join(e.dir, "stop")
	script := `id -u; id -g; id -G; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status | tr -s '\t ' ' '
touch /etc/torpor-pwned && echo WROTE-ETC; echo done; while [ ! -e ` + stop + ` ]; do sleep 0.05; done`
	if err := s.Start(ctx, Process{Argv: []string{"/bin/bash", "-c", script}, Output: out, ExitFile: exitFile, User: usr}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the command's report", 20*time.Second, func() bool { b, _ := os.ReadFile(out); return strings.Contains(string(b), "done\n") })
	// The init (outside the command's view: /proc is the host's).
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	initStatus := statusFields(string(st))
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tree to exit", 20*time.Second, func() bool { return s.State() == Exited })
	b, _ := os.ReadFile(out)
	got := string(b)
	t.Logf("output:\n%s\ninit: %v", got, initStatus)
	if initStatus["Uid"] != "0 0 0 0" {
		t.Fatalf("the init runs as Uid %q, want root's (CRIU's parasite mounts a procfs in it)", initStatus["Uid"])
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if !strings.Contains(got, k+": 0000000000000000") {
			t.Fatalf("the command holds %s", k)
		}
	}
	if !strings.Contains(got, "NoNewPrivs: 1") {
		t.Fatal("the command lacks no_new_privs")
	}
	if strings.Contains(got, "WROTE-ETC") || exists("/etc/torpor-pwned") {
		os.Remove("/etc/torpor-pwned")
		t.Fatal("the user's job wrote to /etc")
	}
	if err := s.ExitErr(); err != nil {
		t.Fatalf("tree ended with %v", err)
	}
	if st, err := os.Stat(exitFile); err != nil || uidOf(st) != u.UID {
		t.Fatalf("exit file %v, owned by uid %d, want %d", err, uidOf(st), u.UID)
	}

	for _, tc := range []struct {
		name string
		p    Process
		want string
	}{
		{"working directory /root", Process{Argv: []string{"/bin/true"}, Dir: "/root"}, "working directory /root: permission denied"},
		{"a program only root may run", Process{Argv: []string{rootOnly(t, e.dir)}}, "start command: exec " + filepath.Join(e.dir, "root-only") + ": permission denied (as uid"},
	} {
		s := e.sandbox(1, 2, false)
		tc.p.User = usr
		err := s.Start(ctx, tc.p)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: Start returned %v, want %q", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

// statusFields maps the keys of a /proc/PID/status to their values (tabs
// turned into single spaces).
func statusFields(st string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(st, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// rootOnly writes a program only root may read and run.
func rootOnly(t *testing.T, dir string) string {
	p := filepath.Join(dir, "root-only")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

func uidOf(st os.FileInfo) int {
	if st == nil {
		return -1
	}
	return int(st.Sys().(*syscall.Stat_t).Uid)
}

// TestDumpedCreds: the credentials CRIU recorded for a user's tree are the
// init's (root) and the user's for every other task; criu.CheckCreds takes
// them and refuses them for another uid.
func TestDumpedCreds(t *testing.T) {
	u := testuser.New(t) // before the cluster: removed after it
	e := newEnv(t, 1)
	usr := &User{UID: u.UID, GID: u.GID, Groups: []int{u.GID, u.Supplement}}
	testuser.OpenDirs(t, e.dir)
	s := e.sandbox(1, 1, false)
	out := filepath.Join(e.dir, "creds.out")
	if err := CreateOwned(out, usr, 0o600); err != nil {
		t.Fatal(err)
	}
	stop := filepath.Join(e.dir, "stop")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Start(ctx, Process{Argv: []string{"/bin/bash", "-c", "echo up; while [ ! -e " + stop + " ]; do sleep 0.05; done"}, Output: out, User: usr}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the command", 20*time.Second, func() bool { b, _ := os.ReadFile(out); return strings.Contains(string(b), "up") })
	if err := s.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	dir := e.images("creds")
	if _, err := s.Dump(ctx, e.drv, criu.Options{ImagesDir: dir, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	creds, err := criu.ReadCreds(dir)
	if err != nil {
		t.Fatal(err)
	}
	users := 0
	for _, c := range creds {
		t.Logf("task %d thread %d root=%v uids %v gids %v groups %v", c.Pid, c.Tid, c.Root, c.UIDs, c.GIDs, c.Groups)
		if !c.Root {
			users++
		}
	}
	if users == 0 {
		t.Fatal("no task of the user in the images")
	}
	groups := []uint32{uint32(u.Supplement)}
	if err := criu.CheckCreds(creds, uint32(u.UID), uint32(u.GID), groups); err != nil {
		t.Fatalf("the user's own checkpoint: %v", err)
	}
	if err := criu.CheckCreds(creds, uint32(u.UID)+1, uint32(u.GID), groups); err == nil || !strings.Contains(err.Error(), "would be restored as uids") {
		t.Fatalf("checked for another uid: %v", err)
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tree to exit", 20*time.Second, func() bool { return s.State() == Exited })
}
