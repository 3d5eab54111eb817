package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
}

// envFile is the command's environment for execearly.c's descriptor 4: a
// memory file of its entries, each ended by a NUL.
func envFile(env []string) (*os.File, error) {
	fd, err := unix.MemfdCreate("torpor-exec-env", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "torpor-exec-env")
	var b strings.Builder
	for _, kv := range env {
		if strings.IndexByte(kv, 0) >= 0 {
			f.Close()
			return nil, fmt.Errorf("an entry holds a NUL byte: %q", kv)
		}
		b.WriteString(kv)
		b.WriteByte(0)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// execArg0 is argv[0] of the command's process (PID 2) before it executes
// the command: execearly.c's constructor takes it, before the Go runtime
// starts (execArgs).
const execArg0 = "torpor-exec"

// execArgs is the command's process's argv: execArg0 UID GID GROUPS DIR
// COMMAND [ARG...], with "-" for root's ids and for no groups (execearly.c).
func execArgs(cfg initConfig) []string {
	uid, gid, groups := "-", "-", "-"
	if !cfg.User.Root() {
		uid, gid = strconv.Itoa(cfg.User.UID), strconv.Itoa(cfg.User.GID)
		if len(cfg.User.Groups) > 0 {
			g := make([]string, len(cfg.User.Groups))
			for i, v := range cfg.User.Groups {
				g[i] = strconv.Itoa(v)
			}
			groups = strings.Join(g, ",")
		}
	}
	return append([]string{execArg0, uid, gid, groups, cfg.Dir}, cfg.Argv...)
}

// MaybeRunInit runs the sandbox init and never returns when this process was
// started as one (like `runc init`); otherwise it returns at once. Call it
// first thing in main and in TestMain of packages that start sandboxes.
func MaybeRunInit() {
	if len(os.Args) > 0 && os.Args[0] == execArg0 {
		// execearly.c's constructor executes the command before the Go
		// runtime starts; it is not in a binary built without cgo.
		initFail(errors.New("this torpor binary was built without cgo: its sandboxes cannot start their command; build it with CGO_ENABLED=1"))
		os.Exit(127)
	}
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
	env, err := envFile(cfg.Env)
	if err != nil {
		initFail(fmt.Errorf("the command's environment: %w", err))
		return 125
	}
	unix.CloseOnExec(initReportFD)
	// The command's process becomes the owner and executes the command
	// (execearly.c), checking each step as the owner, so that Start can
	// say which one the owner may not do. It starts as root with no
	// environment of its own: the owner's (LD_PRELOAD, LD_LIBRARY_PATH, …)
	// reaches only the command, through env.
	proc, err := os.StartProcess("/proc/self/exe", execArgs(cfg), &os.ProcAttr{Env: []string{}, Files: append(files, report, env)})
	env.Close()
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
