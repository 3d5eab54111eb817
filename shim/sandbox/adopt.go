package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/cgroup"
)

// ErrGone means the sandbox to adopt no longer exists: its network namespace
// or its cgroup is missing. Adopt removes whatever was left of it.
var ErrGone = errors.New("sandbox is gone")

// ExitStatus is how the init of a tree that this process did not start (an
// adopted one) ended, as the init wrote it to its exit file.
type ExitStatus struct {
	Code int
	// Unknown: the init left no exit file (it was killed, or it ended while
	// no shim was there and the file was lost); Code is then 255.
	Unknown bool
}

func (e *ExitStatus) Error() string {
	if e.Unknown {
		return "exit status unknown: the job-node ended while its shim was down"
	}
	return "exit status " + strconv.Itoa(e.Code)
}

// ExitCode is the init's exit status (255 when unknown).
func (e *ExitStatus) ExitCode() int { return e.Code }

// unknownExitCode is reported when an adopted tree ended without a status.
const unknownExitCode = 255

// readExitFile turns an init's exit file into the tree's end: nil for
// status 0, an *ExitStatus otherwise or when there is no file.
func readExitFile(path string) error {
	if path == "" {
		return &ExitStatus{Code: unknownExitCode, Unknown: true}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return &ExitStatus{Code: unknownExitCode, Unknown: true}
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return &ExitStatus{Code: unknownExitCode, Unknown: true}
	}
	if code == 0 {
		return nil
	}
	return &ExitStatus{Code: code}
}

// Adopt rebuilds the Sandbox described by cfg, which an earlier process (a
// shim that died) created with New and started or restored: its network
// namespace, host veth and cgroup exist, and its tree may still run. cfg must
// name the same NetNS, HostVeth, HostNetNS and Cgroup as then; exitFile is
// the Process.ExitFile the tree was started with.
//
// The init is found among the cgroup's processes (PID 1 of its own PID
// namespace) and watched through a pidfd, as it is not this process's child;
// its exit status then comes from exitFile. The sandbox is Frozen if its
// cgroup is frozen (it stays so until Thaw), Running otherwise, and Exited
// when no init is left. If the namespace or the cgroup is missing, Adopt
// removes what remains of the sandbox and returns an error wrapping ErrGone.
func Adopt(ctx context.Context, cfg Config, exitFile string) (_ *Sandbox, err error) {
	if cfg.NetNS == "" || cfg.Address == "" || cfg.Cgroup == "" || cfg.HostVeth == "" {
		return nil, fmt.Errorf("adopt sandbox %s: NetNS, Address, Cgroup and HostVeth are required", cfg.Name)
	}
	ip, _, err := net.ParseCIDR(cfg.Address)
	if err != nil || ip.To4() == nil {
		return nil, fmt.Errorf("adopt sandbox %s: address %q is not an IPv4 CIDR", cfg.Name, cfg.Address)
	}
	if cfg.CgroupMount == "" {
		if cfg.CgroupMount, err = cgroup.Mountpoint(); err != nil {
			return nil, fmt.Errorf("adopt sandbox %s: %w", cfg.Name, err)
		}
	}
	s := &Sandbox{cfg: cfg, ip: ip.To4(), log: cfg.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("sandbox", cfg.Name)
	cg := cgroup.New(cfg.CgroupMount, cfg.Cgroup)
	_, nsErr := os.Stat(netquiesce.NetnsPath(cfg.NetNS))
	_, cgErr := os.Stat(cg.Path())
	if nsErr == nil && cgErr == nil {
		s.cg = cg
	}
	if cfg.HostNetNS != "" {
		s.host, err = netquiesce.OpenNamedNet(cfg.HostNetNS)
	} else {
		s.host, err = openSelfNet()
	}
	if s.cg == nil {
		// The host end of the veth goes with the host namespace if that is
		// gone too: teardown skips it then.
		if err != nil {
			s.host = nil
		}
		var missing []string
		if nsErr != nil {
			missing = append(missing, "network namespace "+cfg.NetNS)
		}
		if cgErr != nil {
			missing = append(missing, "cgroup "+cg.Path())
		} else {
			s.cg = cg // kill and remove what is left in it
		}
		terr := s.teardown(context.WithoutCancel(ctx))
		s.state = Destroyed
		return nil, errors.Join(fmt.Errorf("adopt sandbox %s: %w: no %s", cfg.Name, ErrGone, strings.Join(missing, ", ")), terr)
	}
	if err != nil {
		return nil, fmt.Errorf("adopt sandbox %s: %w", cfg.Name, err)
	}
	defer func() {
		if err != nil {
			// Keep the sandbox as it is: only close what this process opened.
			s.host.Close()
			if s.sb != nil {
				s.sb.Close()
			}
			err = fmt.Errorf("adopt sandbox %s: %w", cfg.Name, err)
		}
	}()
	if s.sb, err = netquiesce.OpenNamedNet(cfg.NetNS); err != nil {
		return nil, err
	}
	if _, err = s.host.Link(cfg.HostVeth); err != nil {
		return nil, fmt.Errorf("host veth: %w", err)
	}
	pid, pidfd, err := findInit(cg)
	if err != nil {
		return nil, err
	}
	if pid == 0 {
		s.state, s.exitErr = Exited, readExitFile(exitFile)
		s.log.Info("sandbox adopted", "state", s.state, "err", s.exitErr)
		return s, nil
	}
	frozen, err := readFreeze(cg)
	if err != nil {
		unix.Close(pidfd)
		return nil, err
	}
	s.state = Running
	if frozen {
		s.state = Frozen
	}
	t := &tree{pid: pid, done: make(chan struct{})}
	s.tree = t
	s.watch(t, func() error {
		waitPidfd(pidfd)
		return readExitFile(exitFile)
	})
	s.log.Info("sandbox adopted", "pid", pid, "state", s.state)
	return s, nil
}

// readFreeze says whether the group is set to frozen (cgroup.freeze).
func readFreeze(cg *cgroup.Group) (bool, error) {
	b, err := os.ReadFile(filepath.Join(cg.Path(), "cgroup.freeze"))
	if err != nil {
		return false, fmt.Errorf("read freeze state of %s: %w", cg.Rel(), err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// findInit returns the sandbox init among the group's processes (the one
// that is PID 1 of its PID namespace) and a pidfd for it, or 0 when there
// is none. The pidfd pins the process: the check is repeated after it is
// opened, so a recycled PID is not taken for the init.
func findInit(cg *cgroup.Group) (int, int, error) {
	pids, err := cg.Procs()
	if err != nil {
		return 0, 0, err
	}
	for _, pid := range pids {
		if !isInitOf(pid, cg.Rel()) {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone meanwhile
		}
		if !isInitOf(pid, cg.Rel()) {
			unix.Close(fd)
			continue
		}
		return pid, fd, nil
	}
	return 0, 0, nil
}

// isInitOf says whether pid is PID 1 of a child PID namespace and lives in
// the cgroup rel.
func isInitOf(pid int, rel string) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return false
	}
	init := false
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			init = len(f) >= 2 && f[len(f)-1] == "1"
		}
		if v, ok := strings.CutPrefix(line, "State:"); ok && strings.HasPrefix(strings.TrimSpace(v), "Z") {
			return false
		}
	}
	if !init {
		return false
	}
	cgs, err := os.ReadFile(filepath.Join(dir, "cgroup"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(cgs), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && p == rel {
			return true
		}
	}
	return false
}

// waitPidfd blocks until the process of pidfd has exited, then closes it.
func waitPidfd(fd int) {
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return // readable (exited) or an error that polling again would not fix
	}
}
