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

// initReportFD is the init's end of the pipe on which it tells Start that
// the command runs ("ok"), or why it does not. The init closes it before the
// command can be dumped.
const initReportFD = 3

// initOK is the report of an init whose command runs.
const initOK = "ok"

// initConfig is what the sandbox's PID 1 needs to know.
type initConfig struct {
	Hostname string   `json:"hostname"`
	Argv     []string `json:"argv"`
	Env      []string `json:"env"`
	Dir      string   `json:"dir"`
	Output   string   `json:"output"` // stdout+stderr of the command; "" = inherit
	// ExitFile receives the init's exit status just before it exits; "" =
	// none. It exists already (Start creates it, owned by User): the init
	// may not be able to create files where it lives.
	ExitFile string `json:"exit_file,omitempty"`
	// User, unless nil or root, is who the init becomes once it set the
	// hostname, before it touches anything else.
	User *User `json:"user,omitempty"`
	// Dropped is set in the init re-executed as User.
	Dropped bool `json:"dropped,omitempty"`
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
	code := runInit(cfg)
	if cfg.ExitFile != "" {
		// In place, O_NOFOLLOW: the file is the owner's, in a directory only
		// root may change. A reader sees no status or all of it (one small
		// write into an empty file).
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

func writeExitFile(path string, code int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW, 0)
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
// namespace), becomes the job's owner, starts the command, reaps every
// child, and exits with the command's status when the command exits. It is
// a session leader (setsid by the shim) and has no parent-death signal, so
// CRIU can dump and restore it.
func runInit(cfg initConfig) int {
	if !cfg.Dropped {
		// The report pipe must reach the re-executed init, and nothing
		// after it.
		if cfg.Hostname != "" {
			if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
				initFail(fmt.Errorf("set hostname: %w", err))
				return 125
			}
		}
		if !cfg.User.Root() {
			err := becomeUser(cfg) // returns only on failure
			initFail(fmt.Errorf("become uid %d: %w", cfg.User.UID, err))
			return 125
		}
	}
	unix.CloseOnExec(initReportFD)
	if !cfg.User.Root() {
		if err := checkDropped(); err != nil {
			initFail(err)
			return 125
		}
	}
	if len(cfg.Argv) == 0 {
		initFail(errors.New("no command"))
		return 125
	}
	files := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	if cfg.Output != "" {
		out, err := os.OpenFile(cfg.Output, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			initFail(fmt.Errorf("open output: %w", err))
			return 125
		}
		files = []*os.File{os.Stdin, out, out}
	}
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	if cfg.Dir != "" {
		// Checked here, as the owner: os.StartProcess would only say
		// "chdir" in the child.
		if err := unix.Access(cfg.Dir, unix.X_OK); err != nil {
			initFail(fmt.Errorf("working directory %s: %w (as uid %d)", cfg.Dir, err, os.Getuid()))
			return 125
		}
	}
	proc, err := os.StartProcess(cfg.Argv[0], cfg.Argv, &os.ProcAttr{Dir: cfg.Dir, Env: env, Files: files})
	if err != nil {
		initFail(fmt.Errorf("start command: %w (as uid %d)", err, os.Getuid()))
		return 127
	}
	if cfg.Output != "" {
		files[1].Close()
	}
	if f := os.NewFile(initReportFD, "init-report"); f != nil {
		_, _ = f.WriteString(initOK)
		f.Close()
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

// becomeUser turns the init into cfg.User for good and executes it again:
// no_new_privs and an empty capability bounding set are per-thread, so they
// are set on this thread, locked, which then replaces the program; every
// thread of the new image inherits them. The uid, gid and groups apply to
// every thread. It returns only on failure.
func becomeUser(cfg initConfig) error {
	runtime.LockOSThread()
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
	u := cfg.User
	if err := syscall.Setgroups(u.Groups); err != nil {
		return fmt.Errorf("set groups %v: %w", u.Groups, err)
	}
	if err := syscall.Setresgid(u.GID, u.GID, u.GID); err != nil {
		return fmt.Errorf("set gid %d: %w", u.GID, err)
	}
	// From a uid of 0 to none: the permitted, effective and ambient
	// capabilities are cleared.
	if err := syscall.Setresuid(u.UID, u.UID, u.UID); err != nil {
		return fmt.Errorf("set uid %d: %w", u.UID, err)
	}
	cfg.Dropped = true
	raw, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return syscall.Exec("/proc/self/exe", []string{"torpor-init"}, []string{initEnv + "=" + string(raw)})
}

// checkDropped fails unless this process holds no capability at all and
// cannot gain one.
func checkDropped() error {
	data, err := os.ReadFile("/proc/self/status")
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

// initSysProcAttr is how the shim clones the init.
func initSysProcAttr(cgroupFD int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWPID | unix.CLONE_NEWUTS,
		Setsid:      true,
		UseCgroupFD: true,
		CgroupFD:    cgroupFD,
	}
}
