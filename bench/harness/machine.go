package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

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
	return m
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
