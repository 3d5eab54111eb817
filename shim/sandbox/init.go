package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// initEnv selects init mode in a re-executed torpor binary and carries its
// configuration (JSON). It is removed before the command starts.
const initEnv = "_TORPOR_SANDBOX_INIT"

// initConfig is what the sandbox's PID 1 needs to know.
type initConfig struct {
	Hostname string   `json:"hostname"`
	Argv     []string `json:"argv"`
	Env      []string `json:"env"`
	Dir      string   `json:"dir"`
	Output   string   `json:"output"` // stdout+stderr of the command; "" = inherit
	// ExitFile receives the init's exit status just before it exits; "" = none.
	ExitFile string `json:"exit_file,omitempty"`
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
		fmt.Fprintln(os.Stderr, "torpor sandbox init: bad configuration:", err)
		os.Exit(125)
	}
	code := runInit(cfg)
	if cfg.ExitFile != "" {
		// For a shim that is not the init's parent (one that adopted the
		// job-node): all of the status or nothing.
		if err := atomicfile.Write(cfg.ExitFile, fmt.Appendf(nil, "%d\n", code), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "torpor sandbox init: write exit status:", err)
		}
	}
	os.Exit(code)
}

// runInit is PID 1 of the sandbox: it sets the hostname (its own UTS
// namespace), starts the command, reaps every child, and exits with the
// command's status when the command exits. It is a session leader (setsid by
// the shim) and has no parent-death signal, so CRIU can dump and restore it.
func runInit(cfg initConfig) int {
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			fmt.Fprintln(os.Stderr, "torpor sandbox init: set hostname:", err)
			return 125
		}
	}
	if len(cfg.Argv) == 0 {
		fmt.Fprintln(os.Stderr, "torpor sandbox init: no command")
		return 125
	}
	files := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	if cfg.Output != "" {
		out, err := os.OpenFile(cfg.Output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "torpor sandbox init: open output:", err)
			return 125
		}
		files = []*os.File{os.Stdin, out, out}
	}
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	proc, err := os.StartProcess(cfg.Argv[0], cfg.Argv, &os.ProcAttr{Dir: cfg.Dir, Env: env, Files: files})
	if err != nil {
		fmt.Fprintln(os.Stderr, "torpor sandbox init: start command:", err)
		return 127
	}
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

// initSysProcAttr is how the shim clones the init.
func initSysProcAttr(cgroupFD int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWPID | unix.CLONE_NEWUTS,
		Setsid:      true,
		UseCgroupFD: true,
		CgroupFD:    cgroupFD,
	}
}
