package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// A run of these tests names what it creates on the machine after its PID
// (modulo 100000): network namespaces torpor-eN-*, the cgroup torpor/eN,
// the root-namespace veth tpsN and an isolated cluster's mount namespaces
// in /run/torpor-sim/eN. A run that was killed (SIGKILL, a session
// that ended) ran none of its clean-ups, and a later run would stumble over
// them: the veth's route to 198.18.0.1 made `ip route add` fail with "File
// exists" in every Slurm test of the next run.
var (
	leftNetns = regexp.MustCompile(`^torpor-e([0-9]+)-`)
	leftVeth  = regexp.MustCompile(`^tps([0-9]+)$`)
	leftCg    = regexp.MustCompile(`^e([0-9]+)$`)
)

// removeLeftovers removes those of runs that are no longer alive: no e2e
// test binary has a PID that names them. It kills nothing: a process left
// in a removed namespace keeps it until it exits, and a cgroup that still
// holds one is reported and kept.
func removeLeftovers() {
	alive := aliveRuns()
	dead := func(re *regexp.Regexp, name string) bool {
		m := re.FindStringSubmatch(name)
		return m != nil && !alive[m[1]]
	}
	var removed []string
	if ents, err := os.ReadDir(netquiesce.NetnsDir); err == nil {
		for _, e := range ents {
			if dead(leftNetns, e.Name()) {
				if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
					fmt.Fprintf(os.Stderr, "e2e: remove network namespace %s: %v: %s\n", e.Name(), err, out)
					continue
				}
				removed = append(removed, "netns "+e.Name())
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			// 88: tps27649@if6: <BROADCAST,...
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if dead(leftVeth, name) {
				if out, err := exec.Command("ip", "link", "del", name).CombinedOutput(); err != nil {
					fmt.Fprintf(os.Stderr, "e2e: remove link %s: %v: %s\n", name, err, out)
					continue
				}
				removed = append(removed, "link "+name)
			}
		}
	}
	if mount, err := cgroup.Mountpoint(); err == nil {
		root := filepath.Join(mount, "torpor")
		ents, _ := os.ReadDir(root)
		for _, e := range ents {
			if e.IsDir() && dead(leftCg, e.Name()) {
				if err := removeCgroupTree(filepath.Join(root, e.Name())); err != nil {
					fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
					continue
				}
				removed = append(removed, "cgroup torpor/"+e.Name())
			}
		}
	}
	// An isolated cluster's mount namespaces (simhost.MountNSDir/eN).
	if ents, err := os.ReadDir(simhost.MountNSDir); err == nil {
		for _, e := range ents {
			if dead(leftCg, e.Name()) {
				if err := simhost.Remove(e.Name()); err != nil {
					fmt.Fprintf(os.Stderr, "e2e: remove the mount namespaces of a killed run: %v\n", err)
					continue
				}
				removed = append(removed, "mount namespaces "+e.Name())
			}
		}
	}
	if len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: removed what killed runs left: %s\n", strings.Join(removed, ", "))
	}
}

// aliveRuns returns the PIDs (modulo 100000, as names use them) of the
// running e2e test binaries, this one included.
func aliveRuns() map[string]bool {
	alive := map[string]bool{strconv.Itoa(os.Getpid() % 100000): true}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == "e2e.test" {
			alive[strconv.Itoa(pid%100000)] = true
		}
	}
	return alive
}

// removeCgroupTree removes the cgroup dir and those below it, deepest
// first; it fails on one that still holds a process.
func removeCgroupTree(dir string) error {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil {
			return fmt.Errorf("remove the cgroup of a killed run: %w", err)
		}
	}
	return nil
}

// TestRemoveLeftovers: what a killed run named after a PID no e2e test
// binary has (a network namespace with a veth into it and a route over
// that, a cgroup tree, a mount namespace) is removed; what a live run's
// name says is kept.
func TestRemoveLeftovers(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, links and cgroups")
	dead := ""
	alive := aliveRuns()
	for n := 99999; n > 90000; n-- {
		if !alive[strconv.Itoa(n)] {
			dead = strconv.Itoa(n)
			break
		}
	}
	live := strconv.Itoa(os.Getpid() % 100000)
	mount, err := cgroup.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	deadNS, liveNS := "torpor-e"+dead+"-h1", "torpor-e"+live+"-leftover-test"
	deadCg, liveCg := filepath.Join(mount, "torpor", "e"+dead), filepath.Join(mount, "torpor", "e"+live+"-leftover-test")
	t.Cleanup(func() {
		for _, ns := range []string{deadNS, liveNS} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
		_ = exec.Command("ip", "link", "del", "tps"+dead).Run()
		_ = removeCgroupTree(deadCg)
		_ = removeCgroupTree(liveCg)
	})
	run("netns", "add", deadNS)
	run("netns", "add", liveNS)
	run("link", "add", "tps"+dead, "type", "veth", "peer", "name", "x0", "netns", deadNS)
	run("link", "set", "tps"+dead, "up")
	run("route", "add", "198.18.255.254/32", "dev", "tps"+dead)
	for _, d := range []string{filepath.Join(deadCg, "h1", "job", "n0"), liveCg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	deadMnt := &simhost.Cluster{Name: "e" + dead}
	t.Cleanup(func() { _ = deadMnt.Close() })
	if _, err := deadMnt.NewMountNS("h1", [][2]string{{t.TempDir(), t.TempDir()}}); err != nil {
		t.Fatal(err)
	}

	removeLeftovers()

	if _, err := os.Stat(filepath.Join(simhost.MountNSDir, "e"+dead)); !os.IsNotExist(err) {
		t.Errorf("the dead run's mount namespaces are still there (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(netquiesce.NetnsDir, deadNS)); !os.IsNotExist(err) {
		t.Errorf("the dead run's namespace %s is still there (%v)", deadNS, err)
	}
	if _, err := os.Stat(deadCg); !os.IsNotExist(err) {
		t.Errorf("the dead run's cgroup %s is still there (%v)", deadCg, err)
	}
	if out, _ := exec.Command("ip", "route", "show", "198.18.255.254/32").Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("the dead run's route is still there: %s", out)
	}
	if _, err := os.Stat(filepath.Join(netquiesce.NetnsDir, liveNS)); err != nil {
		t.Errorf("this run's namespace %s was removed: %v", liveNS, err)
	}
	if _, err := os.Stat(liveCg); err != nil {
		t.Errorf("this run's cgroup %s was removed: %v", liveCg, err)
	}
}
