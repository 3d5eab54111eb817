package harness

import (
	"math"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestParseProcStat reads command names that hold spaces and parentheses,
// and tells kernel threads by their parent.
func TestParseProcStat(t *testing.T) {
	rest := func(ppid string) string {
		// state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime prio nice threads itreal starttime vsize
		return " S " + ppid + " 7 7 0 -1 4194304 10 0 0 0 123 45 9 9 20 0 3 0 98765 1000"
	}
	for _, tc := range []struct {
		name, data, comm string
		pid              int
		kernel           bool
	}{
		{"plain", "42 (ring.openmpi)" + rest("41"), "ring.openmpi", 42, false},
		{"spaces and parens", "43 (a (b) c)" + rest("1"), "a (b) c", 43, false},
		{"kernel thread", "44 (kworker/0:1-ev)" + rest("2"), "kworker/0:1-ev", 44, true},
		{"kthreadd", "2 (kthreadd)" + rest("0"), "kthreadd", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, p, err := parseProcStat(tc.pid, []byte(tc.data+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			want := procTicks{comm: tc.comm, kernel: tc.kernel, ticks: 168}
			if k != (procKey{tc.pid, 98765}) || p != want {
				t.Errorf("got %+v %+v, want pid %d start 98765, %+v", k, p, tc.pid, want)
			}
		})
	}
	for _, bad := range []string{"", "5 ring S 1", "6 (ring) S 1 2 3"} {
		if _, _, err := parseProcStat(5, []byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestCPUBetween checks the split of two synthetic looks: shares of the
// machine's ticks, a reused pid and a new process left out, the rank's name
// cut as the kernel cuts it.
func TestCPUBetween(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := cpuLook{at: t0, total: 1000, busy: 400, procs: map[procKey]procTicks{
		{10, 1}: {comm: "ring.openmpi-lo", ticks: 100},
		{11, 1}: {comm: "ring.openmpi-lo", ticks: 100},
		{12, 1}: {comm: "torpor", ticks: 50},
		{13, 1}: {comm: "mpirun", ticks: 5},
		{14, 1}: {comm: "old", ticks: 5}, // its pid is reused below
		{3, 0}:  {comm: "ksoftirqd/0", kernel: true, ticks: 1},
	}}
	b := cpuLook{at: t0.Add(5 * time.Second), total: 1950, busy: 1340, procs: map[procKey]procTicks{
		{10, 1}: {comm: "ring.openmpi-lo", ticks: 550},
		{11, 1}: {comm: "ring.openmpi-lo", ticks: 540},
		{12, 1}: {comm: "torpor", ticks: 70},
		{13, 1}: {comm: "mpirun", ticks: 10},
		{14, 9}: {comm: "new", ticks: 300},
		{15, 9}: {comm: "newer", ticks: 30},
		{3, 0}:  {comm: "ksoftirqd/0", kernel: true, ticks: 6},
	}}
	c := cpuBetween(a, b, "ring.openmpi-longer-than-15", 2) // 1000 ticks of capacity
	if c == nil {
		t.Fatal("nil")
	}
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s %v, want %v", what, got, want)
		}
	}
	near("secs", c.Secs, 5)
	near("busy", c.BusyPct, 100*940/950.0)
	near("tick gap", c.TickGapPct, 5)
	near("ranks", c.RanksPct, 89)
	near("kernel", c.KernelPct, 0.5)
	near("others", c.OthersPct, 2.5)
	if len(c.Others) != 2 || c.Others[0] != (CPUUse{"torpor", 2}) || c.Others[1] != (CPUUse{"mpirun", 0.5}) {
		t.Errorf("others %+v, want torpor 2, mpirun 0.5", c.Others)
	}
	if c := cpuBetween(b, a, "ring", 2); c != nil {
		t.Errorf("looks in the wrong order gave %+v", c)
	}
}

// TestLookCPU reads the real /proc around CPU this test burns: the ticks
// it finds for this process are those getrusage counts, and with the
// test's name as the rank's they are the ranks' share.
func TestLookCPU(t *testing.T) {
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	self := string(comm[:len(comm)-1])
	usage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	uBefore := usage()
	a, err := lookCPU("/proc")
	if err != nil {
		t.Fatal(err)
	}
	u0 := usage()
	for x := 0; usage()-u0 < 300*time.Millisecond; x++ {
		_ = math.Sqrt(float64(x))
	}
	u1 := usage()
	b, err := lookCPU("/proc")
	if err != nil {
		t.Fatal(err)
	}
	u2 := usage()
	var ta, tb uint64
	for k, p := range a.procs {
		if k.pid == os.Getpid() {
			ta = p.ticks
		}
	}
	for k, p := range b.procs {
		if k.pid == os.Getpid() {
			tb = p.ticks
		}
	}
	// /proc counts in 10 ms ticks, and the looks' own reading counts in
	// part: between the burn alone and all from before the first look to
	// after the second.
	got := time.Duration(tb-ta) * 10 * time.Millisecond
	if lo, hi := u1-u0-20*time.Millisecond, u2-uBefore+20*time.Millisecond; got < lo || got > hi {
		t.Errorf("/proc gave this process %v of CPU between the looks; getrusage %v (bounds %v…%v)", got, u1-u0, lo, hi)
	}
	c := cpuBetween(a, b, self, runtime.NumCPU())
	if c == nil || c.RanksPct <= 0 || c.RanksPct > 100 || c.CPUs < 1 {
		t.Fatalf("split %+v: want this process's share as the ranks'", c)
	}
	want := 100 * float64(tb-ta) / (b.at.Sub(a.at).Seconds() * float64(runtime.NumCPU()) * userHZ)
	if math.Abs(c.RanksPct-want) > 1e-9 {
		t.Errorf("ranks %v%%, want %v%%", c.RanksPct, want)
	}
}

// TestReadCPU checks that a phase read is given once it is over, and that
// a run that ends before its phase does gives none and does not wait for
// the phase.
func TestReadCPU(t *testing.T) {
	ended, done := make(chan struct{}), make(chan struct{})
	var got *B1CPU
	readCPU(cpuPhase{from: 0, to: 50 * time.Millisecond, rank: "ring"}, time.Now(), ended, done, func(c *B1CPU, err error) {
		if err != nil {
			t.Error(err)
		}
		got = c
	})
	<-done
	if got == nil || got.Secs < 0.04 {
		t.Errorf("got %+v, want a reading of about 50 ms", got)
	}

	ended, done = make(chan struct{}), make(chan struct{})
	close(ended)
	start := time.Now()
	readCPU(cpuPhase{from: time.Hour, to: 2 * time.Hour, rank: "ring"}, time.Now(), ended, done, func(c *B1CPU, err error) {
		t.Errorf("gave %+v, %v after the run ended", c, err)
	})
	<-done
	if d := time.Since(start); d > time.Minute {
		t.Errorf("took %v", d)
	}
}

// TestTorporVerb names torpor's processes by their verb.
func TestTorporVerb(t *testing.T) {
	for cmdline, want := range map[string]string{
		"/work/bin/torpor\x00run\x00-n\x002\x00ring\x00": "torpor run",
		"torpor\x00pmixd\x00--spec\x00x.json\x00":        "torpor pmixd",
		"torpor\x00":              "torpor",
		"torpor\x00--version\x00": "torpor",
		"":                        "torpor",
	} {
		if got := torporVerb([]byte(cmdline)); got != want {
			t.Errorf("%q: %q, want %q", cmdline, got, want)
		}
	}
}
