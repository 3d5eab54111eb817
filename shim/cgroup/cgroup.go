// Package cgroup manages the cgroup v2 leaf of a job-node sandbox: create,
// freeze, thaw, kill and remove. It finds where the unified hierarchy is
// mounted (it is /sys/fs/cgroup/unified on hybrid machines) from mountinfo.
package cgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrNoCgroup2 means no cgroup v2 (unified) hierarchy is mounted.
	ErrNoCgroup2 = errors.New("no cgroup v2 hierarchy mounted")
	// ErrNotEmpty means a cgroup still holds processes when it should not.
	ErrNotEmpty = errors.New("cgroup not empty")
)

// pollInterval is how often cgroup.events is re-read while waiting for a state.
const pollInterval = 2 * time.Millisecond

// Mountpoint returns where the cgroup v2 hierarchy is mounted, read from
// /proc/self/mountinfo.
func Mountpoint() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(f interface{ Read([]byte) (int, error) }) (string, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return unescapeMount(fields[4]), nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return "", fmt.Errorf("%w: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`", ErrNoCgroup2)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Group is one cgroup v2 directory.
type Group struct {
	mount string // cgroup2 mountpoint
	rel   string // path below the mountpoint, starting with "/"
}

// New returns the group at rel (e.g. "/torpor/job1/n0") below the cgroup2
// mountpoint mount, without creating it.
func New(mount, rel string) *Group {
	return &Group{mount: mount, rel: "/" + strings.Trim(filepath.Clean("/"+rel), "/")}
}

// Create makes the group (and missing parents). A parent removed while
// this makes its children (RemoveTopIfEmpty, RemoveEmptyParents of
// another group) is made again.
func Create(mount, rel string) (*Group, error) {
	g := New(mount, rel)
	for try := 1; ; try++ {
		err := os.MkdirAll(g.Path(), 0o755)
		if err == nil {
			return g, nil
		}
		if !errors.Is(err, fs.ErrNotExist) || try == 3 {
			return nil, fmt.Errorf("create cgroup %s: %w", g.Path(), err)
		}
	}
}

// RemoveTopIfEmpty removes top (a path below the cgroup2 mountpoint, such as
// "/torpor", which RemoveEmptyParents never removes) when no group is left
// in it: tests and demos call it last, so that a machine keeps no empty
// torpor cgroup after them. A group still there keeps it.
func RemoveTopIfEmpty(top string) {
	top = strings.Trim(filepath.Clean("/"+top), "/")
	mount, err := Mountpoint()
	if err != nil || top == "" {
		return
	}
	_ = unix.Rmdir(filepath.Join(mount, top))
}

// Path is the group's directory.
func (g *Group) Path() string { return filepath.Join(g.mount, g.rel) }

// Rel is the group's path as /proc/PID/cgroup shows it ("0::/torpor/...").
func (g *Group) Rel() string { return g.rel }

// Mount is the cgroup2 mountpoint the group lives under.
func (g *Group) Mount() string { return g.mount }

// Open opens the group's directory, for SysProcAttr.CgroupFD (CLONE_INTO_CGROUP).
func (g *Group) Open() (*os.File, error) {
	f, err := os.OpenFile(g.Path(), unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", g.Path(), err)
	}
	return f, nil
}

// Events is the parsed cgroup.events file.
type Events struct {
	Populated bool // some process lives in the group or below
	Frozen    bool // the whole group is frozen
}

// Events reads cgroup.events.
func (g *Group) Events() (Events, error) {
	b, err := os.ReadFile(filepath.Join(g.Path(), "cgroup.events"))
	if err != nil {
		return Events{}, fmt.Errorf("read cgroup events of %s: %w", g.rel, err)
	}
	var ev Events
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		switch k {
		case "populated":
			ev.Populated = v == "1"
		case "frozen":
			ev.Frozen = v == "1"
		}
	}
	return ev, nil
}

// Procs lists the PIDs (in the caller's PID namespace) directly in the group.
func (g *Group) Procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(g.Path(), "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("read cgroup procs of %s: %w", g.rel, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse cgroup procs of %s: %w", g.rel, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func (g *Group) write(file, value string) error {
	p := filepath.Join(g.Path(), file)
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("write %q to %s: %w", value, p, err)
	}
	return nil
}

// wait polls cgroup.events until cond holds or ctx ends.
func (g *Group) wait(ctx context.Context, what string, cond func(Events) bool) error {
	return g.poll(ctx, fmt.Sprintf("wait for cgroup %s to be %s", g.rel, what), cond, nil)
}

// poll reads cgroup.events every pollInterval until cond holds; while it does
// not, it runs each (when not nil) before waiting. When ctx ends first, the
// error says doing and why ctx ended.
func (g *Group) poll(ctx context.Context, doing string, cond func(Events) bool, each func() error) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		ev, err := g.Events()
		if err != nil {
			return err
		}
		if cond(ev) {
			return nil
		}
		if each != nil {
			if err := each(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", doing, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// Freeze freezes every process of the group and waits until the kernel
// reports the group frozen.
func (g *Group) Freeze(ctx context.Context) error {
	if err := g.SetFreeze(true); err != nil {
		return fmt.Errorf("freeze: %w", err)
	}
	return g.wait(ctx, "frozen", func(ev Events) bool { return ev.Frozen })
}

// SetFreeze writes cgroup.freeze without waiting for the group to reach
// that state; FreezeSet reads it back.
func (g *Group) SetFreeze(on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	return g.write("cgroup.freeze", v)
}

// FreezeSet says whether cgroup.freeze is 1 (the group is frozen or freezing).
func (g *Group) FreezeSet() (bool, error) {
	b, err := os.ReadFile(filepath.Join(g.Path(), "cgroup.freeze"))
	if err != nil {
		return false, fmt.Errorf("read cgroup.freeze of %s: %w", g.rel, err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// Thaw undoes Freeze and waits until the group is no longer frozen.
func (g *Group) Thaw(ctx context.Context) error {
	if err := g.SetFreeze(false); err != nil {
		return fmt.Errorf("thaw: %w", err)
	}
	return g.wait(ctx, "thawed", func(ev Events) bool { return !ev.Frozen })
}

// Kill sends SIGKILL to every process of the group (cgroup.kill) and waits
// until the group is empty. Killing works on frozen groups too. See KillEach
// for a group that will be reused.
func (g *Group) Kill(ctx context.Context) error {
	if err := g.write("cgroup.kill", "1"); err != nil {
		return fmt.Errorf("kill: %w", err)
	}
	return g.wait(ctx, "empty", func(ev Events) bool { return !ev.Populated })
}

// KillEach sends SIGKILL to every process of the group one by one until the
// group is empty. Use it instead of Kill on a group that will take new
// processes later: on Linux 6.18 (seen here), once cgroup.kill was written,
// every process later cloned into the group with CLONE_INTO_CGROUP is killed
// at birth.
func (g *Group) KillEach(ctx context.Context) error {
	empty := func(ev Events) bool { return !ev.Populated }
	return g.poll(ctx, fmt.Sprintf("kill processes of cgroup %s", g.rel), empty, func() error {
		pids, err := g.Procs()
		if err != nil {
			return err
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		return nil
	})
}

// WaitEmpty waits until no process is left in the group.
func (g *Group) WaitEmpty(ctx context.Context) error {
	return g.wait(ctx, "empty", func(ev Events) bool { return !ev.Populated })
}

// Remove kills whatever is left, then removes the group's directory. A group
// that does not exist is not an error.
func (g *Group) Remove(ctx context.Context) error {
	if _, err := os.Stat(g.Path()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := g.Kill(ctx); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", g.rel, err)
	}
	// rmdir can race with the last task's exit being accounted: retry briefly.
	for {
		err := unix.Rmdir(g.Path())
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("remove cgroup %s: %w", g.rel, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: %w (%w)", g.rel, ErrNotEmpty, context.Cause(ctx))
		case <-time.After(pollInterval):
		}
	}
}

// RemoveEmptyParents removes the group's parent directories up to, but not
// including, stop (a path below the mount such as "/torpor"), as long as they
// are empty. It is used to tidy <root>/<job> after the last node left.
func (g *Group) RemoveEmptyParents(stop string) {
	stop = "/" + strings.Trim(filepath.Clean("/"+stop), "/")
	for dir := filepath.Dir(g.rel); dir != "/" && dir != stop && strings.HasPrefix(dir, stop+"/"); dir = filepath.Dir(dir) {
		if err := unix.Rmdir(filepath.Join(g.mount, dir)); err != nil {
			return
		}
	}
}
