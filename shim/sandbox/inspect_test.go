package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// tcpCounters reads Tcp counters of the network namespace a process lives in.
func tcpCounters(t *testing.T, pid int) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		t.Fatal(err)
	}
	var names, vals []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "Tcp:") {
			continue
		}
		if names == nil {
			names = strings.Fields(line)[1:]
		} else {
			vals = strings.Fields(line)[1:]
		}
	}
	out := map[string]int64{}
	for i := range names {
		if i < len(vals) {
			out[names[i]], _ = strconv.ParseInt(vals[i], 10, 64)
		}
	}
	return out
}

// nsPids returns the NSpid line of a process: its PID in each namespace.
func nsPids(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	t.Fatalf("no NSpid for %d", pid)
	return ""
}

// innerPid is a process's PID in its innermost PID namespace.
func innerPid(t *testing.T, pid int) string {
	f := strings.Fields(nsPids(t, pid))
	return f[len(f)-1]
}

// childOf returns the only child of pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	// children lists are per thread (an init restored from an image of
	// before 2026-12-06, a Go runtime, forks from any of its threads).
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil {
		t.Fatal(err)
	}
	var f []string
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err == nil {
			f = append(f, strings.Fields(string(b))...)
		}
	}
	if len(f) != 1 {
		t.Fatalf("init %d has children %v, want one", pid, f)
	}
	c, _ := strconv.Atoi(f[0])
	return c
}

// checkTree verifies where the sandbox's tree lives: its cgroup, that init is
// PID 1 of its namespace, and the hostname.
func checkTree(t *testing.T, s *Sandbox, wantHostname string) {
	t.Helper()
	pid := s.Pid()
	for _, p := range []int{pid, childOf(t, pid)} {
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(cg), "0::"+s.Cgroup().Rel()+"\n") {
			t.Fatalf("process %d of %s is in cgroups\n%s\nwant 0::%s", p, s.Name(), cg, s.Cgroup().Rel())
		}
	}
	if in := innerPid(t, pid); in != "1" {
		t.Fatalf("init of %s has namespace pid %s, want 1", s.Name(), in)
	}
	// An IPC namespace of the tree's own, shared by the init and its child
	// (after a restore too: CRIU recreates it).
	host, err := os.Readlink("/proc/self/ns/ipc")
	if err != nil {
		t.Fatal(err)
	}
	ipc := func(p int) string {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/ipc", p))
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	if ns := ipc(pid); ns == host || ipc(childOf(t, pid)) != ns {
		t.Fatalf("init of %s is in IPC namespace %s, its child in %s, the test in %s: want one of the tree's own", s.Name(), ns, ipc(childOf(t, pid)), host)
	}
	if h := hostnameOf(t, pid); h != wantHostname {
		t.Fatalf("hostname of %s is %q, want %q", s.Name(), h, wantHostname)
	}
}

// hostnameOf reads the hostname of pid's UTS namespace from a locked thread
// that joins it and is then thrown away.
func hostnameOf(t *testing.T, pid int) string {
	t.Helper()
	var name string
	err := nsrun.OnThread(func() error {
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/uts", pid))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWUTS); err != nil {
			return err
		}
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return err
		}
		name = unix.ByteSliceToString(u.Nodename[:])
		return nil
	})
	if err != nil {
		t.Fatalf("hostname of %d: %v", pid, err)
	}
	return name
}
