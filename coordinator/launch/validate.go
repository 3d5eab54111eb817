package launch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// MinCheckpointInterval is the shortest --checkpoint-interval accepted.
const MinCheckpointInterval = time.Second

// Validate checks, before anything starts, that the job can be launched: the
// program exists and is executable (looked up in PATH like exec.LookPath, or
// relative to Wdir), Wdir is a directory, the hostfile reads, every host is
// known to the cluster (knownHosts; nil accepts every host), the ranks fit
// the slots, and the checkpoint interval is at least one second. All problems
// are reported together (errors.Join); each says what to do.
func (o Options) Validate(knownHosts func(string) bool) error {
	var errs []error
	if o.Program == "" {
		errs = append(errs, fmt.Errorf("%w: give one after the flags, e.g. `torpor run -n 4 ./app`", ErrNoProgram))
	}
	if o.Wdir != "" {
		if err := checkDir(o.Wdir); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Program != "" {
		if _, err := o.ResolveProgram(); err != nil {
			errs = append(errs, err)
		}
	}
	if o.NP < 0 || o.NP > MaxRanks {
		errs = append(errs, usagef("-n %d: the number of ranks must be between 1 and %d", o.NP, MaxRanks))
	}
	if o.MapBy != "" && o.MapBy != MapBySlot && o.MapBy != MapByNode {
		errs = append(errs, usagef("--map-by %s: torpor maps by slot or node", o.MapBy))
	}
	if o.MPI != "" && o.MPI != MPIOpenMPI && o.MPI != MPIMPICH {
		errs = append(errs, usagef("--mpi %s: torpor knows openmpi and mpich", o.MPI))
	}
	if o.CheckpointInterval < 0 || (o.CheckpointInterval > 0 && o.CheckpointInterval < MinCheckpointInterval) {
		errs = append(errs, usagef("--checkpoint-interval %s: use at least %s (e.g. 30m), or leave it out to checkpoint only on demand",
			o.CheckpointInterval, MinCheckpointInterval))
	}
	if o.RestartOnFailure < 0 {
		errs = append(errs, usagef("--restart-on-failure %d: must be 0 or more", o.RestartOnFailure))
	}
	for _, e := range o.Env {
		if !envName.MatchString(e.Name) {
			errs = append(errs, usagef("-x %s: not an environment variable name", e.Name))
		}
	}
	hosts, err := o.LoadHosts()
	if err != nil {
		errs = append(errs, err)
	} else {
		if knownHosts != nil {
			for _, h := range hosts {
				if !knownHosts(h.Host) {
					errs = append(errs, fmt.Errorf("host %s (from %s) is not part of this torpor cluster: %w; start `torpor shim --join` on it, or remove it",
						h.Host, o.hostSource(), ErrUnknownHost))
				}
			}
		}
		if o.NP >= 0 && o.NP <= MaxRanks && (o.MapBy == "" || o.MapBy == MapBySlot || o.MapBy == MapByNode) {
			if _, err := Place(o.ranks(hosts, runtime.NumCPU()), hosts, o.MapBy, o.Oversubscribe); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (o Options) hostSource() string {
	if o.Hostfile != "" {
		return "hostfile " + o.Hostfile
	}
	return "--host"
}

// ranks is -n, or all slots of the hosts, or localSlots when there are none.
func (o Options) ranks(hosts []HostSlots, localSlots int) int {
	if o.NP > 0 {
		return o.NP
	}
	if len(hosts) == 0 {
		return max(localSlots, 1)
	}
	n := 0
	for _, h := range hosts {
		n = min(n+h.Slots, MaxRanks)
	}
	return n
}

// LoadHosts returns the hosts of the job: those of --host, or of the
// hostfile, or, when both are given, the --host hosts (which must be in the
// hostfile) with the hostfile's slots, as Open MPI does. None means the
// embedded default (this machine).
func (o Options) LoadHosts() ([]HostSlots, error) {
	if o.Hostfile == "" {
		return MergeHosts(o.Hosts), nil
	}
	f, err := os.Open(o.Hostfile)
	if err != nil {
		return nil, fmt.Errorf("open hostfile: %w; check the --hostfile path", err)
	}
	defer f.Close()
	fromFile, err := ParseHostfile(f, o.Hostfile)
	if err != nil {
		return nil, err
	}
	if len(o.Hosts) == 0 {
		return fromFile, nil
	}
	byName := make(map[string]HostSlots, len(fromFile))
	for _, h := range fromFile {
		byName[h.Host] = h
	}
	var out []HostSlots
	for _, h := range MergeHosts(o.Hosts) {
		fh, ok := byName[h.Host]
		if !ok {
			return nil, fmt.Errorf("host %s is given with --host but is not in hostfile %s: %w; add it to the hostfile or drop one of the two flags",
				h.Host, o.Hostfile, ErrUnknownHost)
		}
		out = append(out, fh)
	}
	return out, nil
}

// Resolve loads the hosts and places the ranks. Without -n the job gets one
// rank per slot, or localSlots ranks (e.g. runtime.NumCPU()) on this machine
// when no hosts are given.
func (o Options) Resolve(localSlots int) (Plan, error) {
	hosts, err := o.LoadHosts()
	if err != nil {
		return Plan{}, err
	}
	return Place(o.ranks(hosts, localSlots), hosts, o.MapBy, o.Oversubscribe)
}

// ResolveProgram returns the absolute path of the program: a name with a
// slash is taken relative to Wdir (or the current directory), a bare name is
// looked up in PATH. The file must be a regular, executable file.
func (o Options) ResolveProgram() (string, error) {
	prog := o.Program
	if prog == "" {
		return "", fmt.Errorf("%w: give one after the flags", ErrNoProgram)
	}
	if strings.Contains(prog, "/") {
		p := prog
		if !filepath.IsAbs(p) && o.Wdir != "" {
			p = filepath.Join(o.Wdir, p)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", fmt.Errorf("resolve program %s: %w", prog, err)
		}
		if err := checkExecutable(abs); err != nil {
			where := ""
			if !filepath.IsAbs(prog) {
				where = " (looked at " + abs + ")"
			}
			hint := ""
			if errors.Is(err, errNoFile) {
				hint = "; check the path"
				if o.Wdir != "" && !filepath.IsAbs(prog) {
					hint += " (relative to --wdir " + o.Wdir + ")"
				}
			}
			return "", kindErrf(ErrProgram, "program %s%s: %v%s", prog, where, err, hint)
		}
		return abs, nil
	}
	var lastErr error
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir == "" {
			dir = "."
		}
		abs, err := filepath.Abs(filepath.Join(dir, prog))
		if err != nil {
			continue
		}
		err = checkExecutable(abs)
		if err == nil {
			return abs, nil
		}
		if !errors.Is(err, errNoFile) && lastErr == nil {
			lastErr = fmt.Errorf("%s: %w", abs, err)
		}
	}
	if lastErr != nil {
		return "", kindErrf(ErrProgram, "program %s: %v", prog, lastErr)
	}
	return "", kindErrf(ErrProgram, "program %s not found in PATH; give its path, e.g. ./%s", prog, prog)
}

var (
	errNotExecutable = errors.New("not executable")
	errNoFile        = errors.New("no such file")
)

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errNoFile
		}
		return err
	}
	if fi.IsDir() {
		return errors.New("is a directory, not a program")
	}
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w; run chmod +x %s", errNotExecutable, path)
	}
	return nil
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return usagef("--wdir %s: no such directory; create it or fix the path", dir)
		}
		return fmt.Errorf("check --wdir %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return usagef("--wdir %s: not a directory", dir)
	}
	return nil
}
