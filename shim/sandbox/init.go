package sandbox

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// initArg0 is argv[0] of the sandbox's init: initearly.c's constructor
// takes it, before the Go runtime starts, and never returns (initArgs).
const initArg0 = "torpor-init"

// initReportFD is, in the init and in the command's process until it
// executes the command, the write end of the pipe on which Start learns
// that the command runs (initExec), or why it does not. initEnvFD holds the
// command's environment (envFile) until the command's process reads it.
const (
	initReportFD = 3
	initEnvFD    = 4
)

// initExec is written just before the command is executed; the pipe then
// closes with the exec. Anything after it, or anything else, is an error.
const initExec = "exec\n"

// initConfig is what the sandbox's PID 1 needs to know.
type initConfig struct {
	Hostname string
	Argv     []string
	Dir      string
	Output   string // stdout+stderr of the command; "" = the init's
	// ExitFile receives the init's exit status just before it exits; "" =
	// none.
	ExitFile string
	// User, unless nil or root, is who the command runs as.
	User *User
}

// envFile is the command's environment for descriptor initEnvFD: a memory
// file of its entries, each ended by a NUL.
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

// initArgs is the init's argv: initArg0 HOSTNAME OUTPUT EXITFILE, then
// execArgs without its argv[0] (initearly.c).
func initArgs(cfg initConfig) []string {
	return append([]string{initArg0, cfg.Hostname, cfg.Output, cfg.ExitFile}, execArgs(cfg)[1:]...)
}

// MaybeRunInit refuses to go on in a process started as a sandbox's init or
// as its command's process: initearly.c's and execearly.c's constructors
// run those before the Go runtime starts, and never return, in a binary
// built with cgo; one built without them cannot start a sandbox. Otherwise
// it returns at once. Call it first thing in main and in TestMain of
// packages that start sandboxes.
func MaybeRunInit() {
	if len(os.Args) == 0 || (os.Args[0] != execArg0 && os.Args[0] != initArg0) {
		return
	}
	msg := "this torpor binary was built without cgo: its sandboxes cannot start their command; build it with CGO_ENABLED=1"
	fmt.Fprintln(os.Stderr, "torpor sandbox init:", msg)
	if f := os.NewFile(initReportFD, "init-report"); f != nil {
		_, _ = f.WriteString(msg)
		f.Close()
	}
	os.Exit(127)
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
