package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// initEnv selects init mode in a re-executed torpor binary and carries its
// configuration (JSON). It is removed before the command starts.
const initEnv = "_TORPOR_SANDBOX_INIT"

// initReportFD is, in the init and in the command's process until it
// executes the command, the write end of the pipe on which Start learns
// that the command runs (initExec), or why it does not.
const initReportFD = 3

// initExec is written just before the command is executed; the pipe then
// closes with the exec. Anything after it, or anything else, is an error.
const initExec = "exec\n"

// initConfig is what the sandbox's PID 1 needs to know.
type initConfig struct {
	Hostname string   `json:"hostname"`
	Argv     []string `json:"argv"`
	Env      []string `json:"env"`
	Dir      string   `json:"dir"`
	Output   string   `json:"output"` // stdout+stderr of the command; "" = inherit
	// ExitFile receives the init's exit status just before it exits; "" =
	// none.
	ExitFile string `json:"exit_file,omitempty"`
	// User, unless nil or root, is who the command runs as.
	User *User `json:"user,omitempty"`
	// Exec is set in the command's process (PID 2), which becomes User and
	// executes the command.
	Exec bool `json:"exec,omitempty"`
}

// MaybeRunInit runs the sandbox init and never returns when this process was
// started as one (like `runc init`); otherwise it returns at once. Call it
// first thing in main and in TestMain of packages that start sandboxes.
func MaybeRunInit() {
	raw, ok := os.LookupEnv(initEnv)
	if !ok {
		return
	}
	os.Unsetenv(initEnv)
	var cfg initConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		initFail(fmt.Errorf("bad configuration: %w", err))
		os.Exit(125)
	}
	if cfg.Exec {
		initFail(execCommand(cfg)) // returns only on failure
		os.Exit(127)
	}
	code := runInit(cfg)
	if cfg.ExitFile != "" {
		if err := writeExitFile(cfg.ExitFile, code); err != nil {
			fmt.Fprintln(os.Stderr, "torpor sandbox init: write exit status:", err)
		}
	}
	os.Exit(code)
}

// initFail tells Start why the command does not run (when the report pipe
// is still open) and the init's own output.
func initFail(err error) {
	fmt.Fprintln(os.Stderr, "torpor sandbox init:", err)
	f := os.NewFile(initReportFD, "init-report")
	if f == nil {
		return
	}
	_, _ = f.WriteString(err.Error())
	f.Close()
}

// writeExitFile writes the status in place, O_NOFOLLOW: the shim created the
// file in a directory only root may change. A reader sees no status or all
// of it (one small write into an empty file).
func writeExitFile(path string, code int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "%d\n", code); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runInit is PID 1 of the sandbox: it sets the hostname (its own UTS
// namespace), starts the command's process, reaps every child, and exits
// with the command's status when the command exits. It is a session leader
// (setsid by the shim) and has no parent-death signal, so CRIU can dump and
// restore it.
//
// The init stays root and runs nothing but this loop: CRIU's parasite, run
// inside the root task of the dumped PID namespace, mounts a procfs of that
// namespace, which takes CAP_SYS_ADMIN (the sandbox has no mount namespace
// with a /proc of its own). The command's process drops to the owner before
// it executes anything of theirs (execCommand).
func runInit(cfg initConfig) int {
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			initFail(fmt.Errorf("set hostname: %w", err))
			return 125
		}
	}
	if len(cfg.Argv) == 0 {
		initFail(errors.New("no command"))
		return 125
	}
	// CRIU's parasite makes its procfs mount point in this process's
	// working directory: one of root's, never the owner's.
	if err := os.Chdir("/"); err != nil {
		initFail(err)
		return 125
	}
	files := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	if cfg.Output != "" {
		// The shim made it, for the owner, in a directory only root may
		// change.
		out, err := os.OpenFile(cfg.Output, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			initFail(fmt.Errorf("open output: %w", err))
			return 125
		}
		files = []*os.File{os.Stdin, out, out}
	}
	report := os.NewFile(initReportFD, "init-report")
	sub := cfg
	sub.Exec, sub.ExitFile, sub.Hostname = true, "", ""
	raw, err := json.Marshal(sub)
	if err != nil {
		initFail(err)
		return 125
	}
	unix.CloseOnExec(initReportFD)
	proc, err := os.StartProcess("/proc/self/exe", []string{"torpor-exec"}, &os.ProcAttr{
		Env: []string{initEnv + "=" + string(raw)}, Files: append(files, report),
	})
	if err != nil {
		initFail(fmt.Errorf("start the command's process: %w", err))
		return 125
	}
	report.Close()
	if cfg.Output != "" {
		files[1].Close()
	}
	main := proc.Pid
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// ECHILD: nothing left to wait for.
			return 0
		}
		if pid != main {
			continue
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus()
		case ws.Signaled():
			return 128 + int(ws.Signal())
		}
	}
}

// execCommand is the command's process before it is the command: it becomes
// cfg.User for good (see becomeUser), enters the working directory and
// executes the command, checking each step as the owner, so that Start can
// say which one the owner may not do. It returns only on failure.
func execCommand(cfg initConfig) error {
	unix.CloseOnExec(initReportFD)
	runtime.LockOSThread()
	if !cfg.User.Root() {
		if err := becomeUser(cfg.User); err != nil {
			return fmt.Errorf("become uid %d: %w", cfg.User.UID, err)
		}
	}
	if cfg.Dir != "" {
		if err := os.Chdir(cfg.Dir); err != nil {
			return fmt.Errorf("working directory %s: %w (as uid %d)", cfg.Dir, errors.Unwrap(err), os.Getuid())
		}
	}
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	report := os.NewFile(initReportFD, "init-report")
	_, _ = report.WriteString(initExec)
	err := syscall.Exec(cfg.Argv[0], cfg.Argv, env)
	return fmt.Errorf("start command: exec %s: %w (as uid %d)", cfg.Argv[0], err, os.Getuid())
}

// becomeUser turns this process into u for good: no_new_privs and an empty
// capability bounding set on this thread, locked, which then executes the
// command (both are per-thread, and the command inherits them); the groups,
// gid and uid on every thread. From a uid of 0 to none, the permitted,
// effective and ambient capabilities are cleared; checkDropped verifies it.
func becomeUser(u *User) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	last, err := capLastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := syscall.Setgroups(u.Groups); err != nil {
		return fmt.Errorf("set groups %v: %w", u.Groups, err)
	}
	if err := syscall.Setresgid(u.GID, u.GID, u.GID); err != nil {
		return fmt.Errorf("set gid %d: %w", u.GID, err)
	}
	if err := syscall.Setresuid(u.UID, u.UID, u.UID); err != nil {
		return fmt.Errorf("set uid %d: %w", u.UID, err)
	}
	return checkDropped()
}

// checkDropped fails unless this thread holds no capability at all and
// cannot gain one.
func checkDropped() error {
	data, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb":
			if strings.Trim(v, "0") != "" {
				return fmt.Errorf("still holds capabilities after dropping them: %s %s", k, v)
			}
		case "NoNewPrivs":
			if v != "1" {
				return errors.New("no_new_privs is not set")
			}
		}
	}
	return nil
}

// capLastCap is the highest capability number this kernel knows.
func capLastCap() (int, error) {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// initSysProcAttr is how the shim clones the init: in PID, UTS and IPC
// namespaces of its own. The IPC namespace keeps the job-node's SysV shared
// memory (MPICH's ranks talk through it) apart from every other job-node's
// and user's on the host, and CRIU dumps and restores it with the tree.
func initSysProcAttr(cgroupFD int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
		Setsid:      true,
		UseCgroupFD: true,
		CgroupFD:    cgroupFD,
	}
}
