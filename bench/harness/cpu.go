package harness

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"time"
)

// B1CPU is where the machine's CPU time went during a long run's steady
// phase: the ranks, the kernel's threads and every other process (the
// launcher and, under torpor, its coordinator, shim and the sandbox's init
// and pmixd; the bench itself on both sides). Percentages are of the
// machine's capacity over the phase, wall time × CPUs, so with one
// busy-polling rank per CPU whatever the others take the ranks lose.
//
// A process's utime + stime follows the scheduler's clock, but /proc/stat
// counts ticks, and on this VM it counts fewer than wall time while the
// CPUs are busy (5.3 % fewer in 10 s of two busy loops, which got 99.5 %
// of wall time × CPUs as their own utime + stime): TickGapPct is that
// shortfall, BusyPct /proc/stat's busy ticks over all its ticks.
type B1CPU struct {
	Secs       float64  `json:"secs"`
	CPUs       int      `json:"cpus"`
	BusyPct    float64  `json:"machine_busy_pct"`
	TickGapPct float64  `json:"proc_stat_tick_gap_pct"`
	RanksPct   float64  `json:"ranks_pct"`
	KernelPct  float64  `json:"kernel_threads_pct"`
	OthersPct  float64  `json:"others_pct"`
	Others     []CPUUse `json:"others"` // by command name, largest first
}

// CPUUse is one command name's share of the machine's CPU time.
type CPUUse struct {
	Comm string  `json:"comm"`
	Pct  float64 `json:"pct"`
}

// cpuLook is one reading of the machine's CPU time: /proc/stat's total
// and busy ticks over all CPUs, and each process's utime + stime.
type cpuLook struct {
	at          time.Time
	total, busy uint64
	procs       map[procKey]procTicks
}

// userHZ is the unit of /proc's tick counts (USER_HZ, 100 on every Linux
// architecture torpor runs on).
const userHZ = 100

// procKey is a process across two looks: a reused pid has another start time.
type procKey struct {
	pid   int
	start uint64
}

type procTicks struct {
	comm   string
	kernel bool // a kernel thread: kthreadd or one of its children
	ticks  uint64
}

// lookCPU reads proc (/proc) once. Processes that end while it reads are
// skipped.
func lookCPU(proc string) (cpuLook, error) {
	l := cpuLook{at: time.Now(), procs: map[procKey]procTicks{}}
	stat, err := os.ReadFile(filepath.Join(proc, "stat"))
	if err != nil {
		return l, err
	}
	if l.total, l.busy, err = machineTicks(stat); err != nil {
		return l, err
	}
	ents, err := os.ReadDir(proc)
	if err != nil {
		return l, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue // ended meanwhile
		}
		k, t, err := parseProcStat(pid, data)
		if err != nil {
			return l, fmt.Errorf("%s/%d/stat: %w", proc, pid, err)
		}
		if t.comm == "torpor" { // one binary: run, coordinator, shim, pmixd
			cmdline, _ := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
			t.comm = torporVerb(cmdline)
		}
		l.procs[k] = t
	}
	return l, nil
}

// machineTicks sums /proc/stat's first line: all of it, and all but idle
// and iowait. guest and guest_nice are already within user and nice.
func machineTicks(stat []byte) (total, busy uint64, err error) {
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat begins %q, not the cpu line", line)
	}
	for i, s := range f[1:9] { // user nice system idle iowait irq softirq steal
		v, err := strconv.ParseUint(string(s), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		total += v
		if i != 3 && i != 4 {
			busy += v
		}
	}
	return total, busy, nil
}

// parseProcStat reads a /proc/<pid>/stat: its command name (in parentheses,
// and it may hold both spaces and parentheses), its parent, utime + stime
// and start time.
func parseProcStat(pid int, data []byte) (procKey, procTicks, error) {
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return procKey{}, procTicks{}, fmt.Errorf("no command name in %q", data)
	}
	// After the name: state(3) ppid(4) … utime(14) stime(15) … starttime(22).
	f := bytes.Fields(data[end+1:])
	if len(f) < 20 {
		return procKey{}, procTicks{}, fmt.Errorf("%d fields after the command name, want 20 or more", len(f))
	}
	num := func(field int) uint64 {
		v, _ := strconv.ParseUint(string(f[field-3]), 10, 64)
		return v
	}
	ppid := num(4)
	return procKey{pid, num(22)},
		procTicks{comm: string(data[open+1 : end]), kernel: pid == 2 || ppid == 2, ticks: num(14) + num(15)}, nil
}

// cpuBetween is where the CPU time of cpus went from a to b. Ranks are the
// processes named rank (a command name is cut to 15 bytes); a process that
// began or ended between the looks is not counted, which in a steady phase
// is none.
func cpuBetween(a, b cpuLook, rank string, cpus int) *B1CPU {
	secs := b.at.Sub(a.at).Seconds()
	if b.total <= a.total || secs <= 0 || cpus < 1 {
		return nil
	}
	if len(rank) > 15 {
		rank = rank[:15]
	}
	capacity := secs * float64(cpus) * userHZ
	pct := func(ticks uint64) float64 { return 100 * float64(ticks) / capacity }
	total := float64(b.total - a.total)
	c := &B1CPU{Secs: secs, CPUs: cpus, BusyPct: 100 * float64(b.busy-a.busy) / total, TickGapPct: 100 * (1 - total/capacity)}
	var ranks, kernel, others uint64
	byComm := map[string]uint64{}
	for k, tb := range b.procs {
		ta, ok := a.procs[k]
		if !ok || tb.ticks < ta.ticks {
			continue
		}
		d := tb.ticks - ta.ticks
		switch {
		case tb.kernel:
			kernel += d
		case tb.comm == rank:
			ranks += d
		default:
			others += d
			byComm[tb.comm] += d
		}
	}
	c.RanksPct, c.KernelPct, c.OthersPct = pct(ranks), pct(kernel), pct(others)
	for comm, d := range byComm {
		if d > 0 {
			c.Others = append(c.Others, CPUUse{comm, pct(d)})
		}
	}
	sort.Slice(c.Others, func(i, j int) bool {
		if c.Others[i].Pct != c.Others[j].Pct {
			return c.Others[i].Pct > c.Others[j].Pct
		}
		return c.Others[i].Comm < c.Others[j].Comm
	})
	return c
}

// readCPU reads the machine's CPU time at init+p.from and init+p.to and
// gives where it went between, unless ended closes first. It closes done
// when it has given its answer or given up.
func readCPU(p cpuPhase, init time.Time, ended <-chan struct{}, done chan<- struct{}, give func(*B1CPU, error)) {
	defer close(done)
	at := func(d time.Duration) (cpuLook, bool, error) {
		select {
		case <-ended:
			return cpuLook{}, false, nil
		case <-time.After(time.Until(init.Add(d))):
		}
		select {
		case <-ended: // both were ready
			return cpuLook{}, false, nil
		default:
		}
		l, err := lookCPU("/proc")
		return l, err == nil, err
	}
	a, ok, err := at(p.from)
	if ok {
		var b cpuLook
		if b, ok, err = at(p.to); ok {
			give(cpuBetween(a, b, p.rank, runtime.NumCPU()), nil)
			return
		}
	}
	if err != nil {
		give(nil, err)
	}
}

// torporVerb names a torpor process by its verb, "torpor run" or "torpor
// pmixd", from its NUL-separated command line.
func torporVerb(cmdline []byte) string {
	args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
	if len(args) < 2 || len(args[1]) == 0 || args[1][0] == '-' {
		return "torpor"
	}
	return "torpor " + string(args[1])
}
