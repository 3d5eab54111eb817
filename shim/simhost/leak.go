package simhost

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// LeakCheck reports what a test left behind: network namespaces of the
// cluster, the cgroup directory cgroupDir (absolute, e.g. the test's job
// cgroup; "" skips the check), processes in a cgroup below it, links in the
// caller's namespace named with vethPrefix ("" skips), and children of this
// process (zombies included).
//
// Orphaned zombies are reaped by PID 1 at its own pace, and the kernel
// removes the veth ends of a deleted namespace in a work queue, so the check
// retries for up to leakWait before it reports: what is really left behind
// stays, and a loaded machine only makes the clean-up late.
func LeakCheck(c *Cluster, cgroupDir, vethPrefix string) error {
	deadline := time.Now().Add(leakWait)
	for {
		err := leakCheck(c, cgroupDir, vethPrefix)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const leakWait = 30 * time.Second

func leakCheck(c *Cluster, cgroupDir, vethPrefix string) error {
	var errs []error
	if c != nil {
		names, err := c.namespaces()
		if err != nil {
			errs = append(errs, err)
		}
		if len(names) > 0 {
			errs = append(errs, fmt.Errorf("network namespaces left: %v", names))
		}
	}
	if cgroupDir != "" {
		if _, err := os.Stat(cgroupDir); err == nil {
			errs = append(errs, fmt.Errorf("cgroup left: %s", cgroupDir))
		}
	}
	if vethPrefix != "" {
		ifs, err := net.Interfaces()
		if err != nil {
			errs = append(errs, fmt.Errorf("list links: %w", err))
		}
		for _, i := range ifs {
			if strings.HasPrefix(i.Name, vethPrefix) {
				errs = append(errs, fmt.Errorf("link left in the root namespace: %s", i.Name))
			}
		}
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		errs = append(errs, err)
	}
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat")); err == nil {
			// pid (comm) state ppid ...
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
				f := strings.Fields(string(stat)[i+1:])
				if len(f) > 1 && f[1] == strconv.Itoa(self) {
					errs = append(errs, fmt.Errorf("child process left: pid %d %s state %s", pid, string(stat)[:i+1], f[0]))
				}
			}
		}
		if cgroupDir == "" {
			continue
		}
		if cg, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup")); err == nil {
			rel := cgroupRel(cgroupDir)
			for _, line := range strings.Split(string(cg), "\n") {
				if strings.HasPrefix(line, "0::") && rel != "" && strings.HasPrefix(strings.TrimPrefix(line, "0::")+"/", rel+"/") {
					errs = append(errs, fmt.Errorf("process %d left in cgroup %s", pid, line[3:]))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupRel turns <mount>/torpor/x into /torpor/x by finding "/torpor/".
func cgroupRel(dir string) string {
	if i := strings.Index(dir, "/torpor/"); i >= 0 {
		return dir[i:]
	}
	return ""
}
