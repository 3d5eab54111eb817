package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"lukechampine.com/blake3"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/shim/criu"
)

// Machine are the facts needed to read the numbers.
type Machine struct {
	Host       string `json:"host"`
	Kernel     string `json:"kernel"`
	CPU        string `json:"cpu"`
	CPUs       int    `json:"cpus"`
	MemTotal   string `json:"mem_total"`
	CRIU       string `json:"criu"`
	CRIUPath   string `json:"criu_path"`
	Storage    string `json:"storage"` // filesystem and device of the checkpoint directory
	StorageDir string `json:"storage_dir"`
	Go         string `json:"go"`
	OpenMPI    string `json:"openmpi"`
	MPICH      string `json:"mpich"`
	// HashMBps is BLAKE3, the memory images' hash, on one CPU in 1 MiB
	// writes (MB/s); HashMBpsBeside the same while a second thread hashes
	// on another CPU. Where they differ, work a shim does beside CRIU (its
	// stream hasher) takes from CRIU, however idle the other CPU was.
	HashMBps       float64 `json:"blake3_mbps"`
	HashMBpsBeside float64 `json:"blake3_mbps_beside_busy_cpu,omitempty"`
	// FaultUs is what the first touch of fresh anonymous memory costs, in
	// µs per 4 KiB page (the median of five 64 MiB mappings, one byte
	// written per page); TouchUs the same pages touched again, resident.
	// Every restore writes the tasks' memory into fresh pages, and CRIU
	// fills buffers of its own as large as a task's private address space:
	// where FaultUs is large (a virtual machine whose host backs a guest
	// page only when it is first touched, or takes back the pages the
	// guest frees) it is a large part of every CRIU figure.
	FaultUs float64 `json:"fault_us_per_page,omitempty"`
	TouchUs float64 `json:"touch_us_per_page,omitempty"`
}

// Facts collects the machine facts; dir is where checkpoints are written.
func Facts(ctx context.Context, dir string, bin criu.Binary) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), StorageDir: dir, CRIUPath: bin.Path}
	m.Host, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Version[:])
	}
	m.CPU = procField("/proc/cpuinfo", "model name")
	m.MemTotal = procField("/proc/meminfo", "MemTotal")
	if v, err := criu.QueryVersion(ctx, bin.Path); err == nil {
		m.CRIU = v.String()
	} else {
		m.CRIU = "unknown: " + err.Error()
	}
	m.Storage = storageOf(dir)
	m.OpenMPI = firstLine(cmdOut(ctx, "mpirun.openmpi", "--version"))
	m.MPICH = versionLine(cmdOut(ctx, "mpirun.mpich", "--version"))
	m.HashMBps, m.HashMBpsBeside = hashRates()
	m.FaultUs, m.TouchUs = faultCost()
	return m
}

// faultCost measures Machine.FaultUs and TouchUs (0, 0 if mmap fails).
func faultCost() (fault, touch float64) {
	const size, page = 64 << 20, 4096
	var fs, ts []float64
	for range 5 {
		mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return 0, 0
		}
		for _, into := range []*[]float64{&fs, &ts} {
			start := time.Now()
			for o := 0; o < size; o += page {
				mem[o]++
			}
			*into = append(*into, float64(time.Since(start).Nanoseconds())/1e3/(size/page))
		}
		_ = unix.Munmap(mem)
	}
	return NewStat(fs).Median, NewStat(ts).Median
}

// hashRates measures Machine.HashMBps and HashMBpsBeside: the median of
// five timings of 64 MiB each, on the first CPU this process may use,
// alone and then with a thread hashing on the second one (0 if there is
// none).
func hashRates() (alone, beside float64) {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) != nil {
		return 0, 0
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 0 {
		return 0, 0
	}
	buf := make([]byte, 16<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	hash := func() {
		h := blake3.New(32, nil)
		for r := 0; r < 4; r++ {
			for o := 0; o < len(buf); o += 1 << 20 {
				h.Write(buf[o : o+1<<20])
			}
		}
		h.Sum(nil)
	}
	rate := func() float64 {
		res := make(chan float64)
		go func() {
			runtime.LockOSThread() // and ends with its goroutine: the thread is pinned
			pin(cpus[0])
			var ts []float64
			for range 5 {
				start := time.Now()
				hash()
				ts = append(ts, Ms(time.Since(start)))
			}
			res <- float64(4*len(buf)) / 1e3 / NewStat(ts).Median
		}()
		return <-res
	}
	alone = rate()
	if len(cpus) < 2 {
		return alone, 0
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		pin(cpus[1])
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				hash()
			}
		}
	}()
	beside = rate()
	close(stop)
	<-done
	return alone, beside
}

// pin keeps the calling thread (locked to its goroutine) on cpu.
func pin(cpu int) {
	var one unix.CPUSet
	one.Set(cpu)
	_ = unix.SchedSetaffinity(0, &one)
}

func cmdOut(ctx context.Context, name string, args ...string) string {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return "unavailable"
	}
	return strings.TrimSpace(string(out))
}

func versionLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(strings.ToLower(l), "version") {
			return strings.TrimSpace(l)
		}
	}
	return firstLine(s)
}

func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// storageOf names the mount (device, filesystem type, mountpoint) holding dir.
func storageOf(dir string) string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	best, bestLen := "unknown", -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 3 {
			continue
		}
		mp := fl[1]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > bestLen {
			best, bestLen = fl[0]+" ("+fl[2]+") on "+mp, len(mp)
		}
	}
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		free := float64(st.Bavail) * float64(st.Bsize) / (1 << 30)
		best += fmt.Sprintf(", %.1f GiB free", free)
	}
	return best
}
