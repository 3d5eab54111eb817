package netquiesce

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// TCPInSegs is the Tcp InSegs counter of pid's network namespace
// (/proc/<pid>/net/snmp): every TCP segment the namespace has received.
// It tells, from outside, whether a job-node's connections move.
func TCPInSegs(pid int) (uint64, error) {
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
