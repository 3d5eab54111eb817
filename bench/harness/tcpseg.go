package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// inSegs is the Tcp InSegs counter of pid's network namespace
// (/proc/<pid>/net/snmp): every TCP segment the namespace received.
func inSegs(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		return 0, fmt.Errorf("read tcp counters of pid %d: %w", pid, err)
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Tcp: ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "InSegs" && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no Tcp InSegs in /proc/%d/net/snmp", pid)
}

// cgroupPid is one process of a cgroup v2 directory.
func cgroupPid(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return 0, fmt.Errorf("list processes of %s: %w", dir, err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("no process in %s", dir)
	}
	return strconv.Atoi(f[0])
}
