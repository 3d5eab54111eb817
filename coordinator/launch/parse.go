package launch

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// UsageError is a malformed `torpor run` command line. It matches ErrUsage
// with errors.Is, and its message points the user at `torpor run -h`.
type UsageError struct {
	Msg string
}

func (e *UsageError) Error() string {
	return e.Msg + " (see `torpor run -h`)"
}

// Unwrap makes errors.Is(err, ErrUsage) true.
func (e *UsageError) Unwrap() error { return ErrUsage }

func usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// flagSpec describes one flag of `torpor run`. Every name is accepted with one
// or two leading dashes, as mpirun does (-np/--np, -host/--host).
type flagSpec struct {
	names []string // as shown in Usage; the first one is used in messages
	arg   string   // value placeholder(s); "" for a switch
	nvals int      // 0, 1 or 2 values
	// dashOK allows a value that starts with "-" (e.g. a negative number,
	// reported by the setter with a better message).
	dashOK bool
	repeat bool // may be given more than once
	help   string
	set    func(o *Options, flag string, vals []string) error
}

// flags is the whole flag set of `torpor run`. Usage is generated from it.
var flags = []flagSpec{
	{names: []string{"-n", "-np", "--np", "-c"}, arg: "N", nvals: 1, dashOK: true,
		help: "number of ranks (default: all slots of the hosts, or one per CPU here)",
		set:  setNP},
	{names: []string{"--host", "-host", "-H"}, arg: "H[:N],...", nvals: 1, repeat: true,
		help: "hosts and their slot counts, e.g. node1:2,node2 (a host without :N has 1 slot; repeated hosts add slots)",
		set:  setHost},
	{names: []string{"--hostfile", "-hostfile", "--machinefile", "-machinefile"}, arg: "FILE", nvals: 1,
		help: "Open MPI hostfile: one `host [slots=N] [max_slots=M]` per line, # comments",
		set:  func(o *Options, _ string, v []string) error { o.Hostfile = v[0]; return nil }},
	{names: []string{"--map-by", "-map-by"}, arg: "slot|node[:oversubscribe]", nvals: 1,
		help: "slot: fill each host's slots in order (default); node: one rank per host, round-robin",
		set:  setMapBy},
	{names: []string{"--bynode", "-bynode"},
		help: "same as --map-by node",
		set:  func(o *Options, _ string, _ []string) error { o.MapBy = MapByNode; return nil }},
	{names: []string{"--byslot", "-byslot"},
		help: "same as --map-by slot",
		set:  func(o *Options, _ string, _ []string) error { o.MapBy = MapBySlot; return nil }},
	{names: []string{"--oversubscribe", "-oversubscribe"},
		help: "allow more ranks than slots (extra ranks spread over the hosts, up to max_slots)",
		set:  func(o *Options, _ string, _ []string) error { o.Oversubscribe = true; return nil }},
	{names: []string{"-x"}, arg: "VAR[=VALUE]", nvals: 1, repeat: true,
		help: "export VAR to the ranks, with VALUE or with its value here",
		set:  setEnv},
	{names: []string{"--tag-output", "-tag-output"},
		help: "prefix each output line with [job,rank]<stdout>: or <stderr>:",
		set:  func(o *Options, _ string, _ []string) error { o.TagOutput = true; return nil }},
	{names: []string{"--wdir", "-wdir", "--wd", "-wd"}, arg: "DIR", nvals: 1,
		help: "working directory of the ranks (a relative program path is looked up there)",
		set:  func(o *Options, _ string, v []string) error { o.Wdir = v[0]; return nil }},
	{names: []string{"--mca", "-mca"}, arg: "KEY VALUE", nvals: 2, repeat: true,
		help: "pass KEY=VALUE to Open MPI ranks as OMPI_MCA_KEY; `--mca crs criu` turns checkpointing on",
		set:  setMCA},
	{names: []string{"-am", "--am"}, arg: "ft-enable-cr", nvals: 1, repeat: true,
		help: "`-am ft-enable-cr` turns checkpointing on (as Open MPI 1.x did)",
		set:  setAM},
	{names: []string{"--checkpoint-dir"}, arg: "DIR", nvals: 1,
		help: "where the job's checkpoints go (turns checkpointing on)",
		set: func(o *Options, _ string, v []string) error {
			o.CheckpointDir, o.Checkpointing = v[0], true
			return nil
		}},
	{names: []string{"--checkpoint-interval"}, arg: "DURATION", nvals: 1, dashOK: true,
		help: "checkpoint periodically, e.g. 30m or 1800 (seconds); turns checkpointing on",
		set:  setInterval},
	{names: []string{"--signal"}, arg: "[B:]SIG[@SECONDS]", nvals: 1,
		help: "Slurm spelling: SIG (USR1, USR2 or HUP) sent to torpor run means checkpoint now (default USR1)",
		set:  setSignal},
	{names: []string{"--keep"}, arg: "PATH", nvals: 1, repeat: true,
		help: "torpor: also capture the files at PATH (a file, or a directory: everything below it) at every checkpoint, besides the files the job holds open for writing; relative to --wdir",
		set: func(o *Options, flag string, v []string) error {
			if v[0] == "" || strings.IndexByte(v[0], 0) >= 0 {
				return usagef("%s %q: give a path", flag, v[0])
			}
			o.Keep = append(o.Keep, v[0])
			return nil
		}},
	{names: []string{"--keep-max"}, arg: "SIZE", nvals: 1,
		help: "torpor: the most one job-node's capture of files may copy at a checkpoint, e.g. 4G (default 1G); a checkpoint that needs more fails and the job runs on",
		set:  setKeepMax},
	{names: []string{"--compress"}, arg: "none|lz4|zstd", nvals: 1,
		help: "torpor: store the memory images of the job's checkpoints compressed (default none); lz4 is the faster, zstd the smaller",
		set: func(o *Options, flag string, v []string) error {
			if _, err := catalog.ParseCodec(v[0]); err != nil {
				return usagef("%s %s: choose none, lz4 or zstd", flag, v[0])
			}
			o.Compress = v[0]
			return nil
		}},
	{names: []string{"--restart-on-failure"}, arg: "N", nvals: 1, dashOK: true,
		help: "restart a failed job up to N times, from its last checkpoint if it has one (default 0)",
		set:  setRestarts},
	{names: []string{"--mpi"}, arg: "openmpi|mpich", nvals: 1,
		help: "MPI the program was built with (default: read from the program's ELF DT_NEEDED)",
		set:  setMPI},
	{names: []string{"--job-name", "--name"}, arg: "NAME", nvals: 1,
		help: "job name shown by `torpor ps` (default: the program name)",
		set:  setJobName},
	{names: []string{"--allow-run-as-root", "-allow-run-as-root"},
		help: "accepted for mpirun compatibility; no effect (ranks run in their sandbox)",
		set:  func(*Options, string, []string) error { return nil }},
	{names: []string{"--plain"},
		help: "torpor: run PROGRAM as is, once per host, without MPI (TORPOR_NODE_INDEX, TORPOR_NODES, TORPOR_NODE_IPS tell each copy where it is)",
		set:  func(o *Options, _ string, _ []string) error { o.Plain = true; return nil }},
	{names: []string{"--socket"}, arg: "PATH", nvals: 1,
		help: "torpor: coordinator socket (default $TORPOR_SOCKET or /run/torpor/coordinator.sock); with no coordinator running, torpor run embeds one",
		set:  func(o *Options, _ string, v []string) error { o.Socket = v[0]; return nil }},
	{names: []string{"--run-dir"}, arg: "DIR", nvals: 1,
		help: "torpor: where job-node output files are (default /run/torpor)",
		set:  func(o *Options, _ string, v []string) error { o.RunDir = v[0]; return nil }},
	{names: []string{"--log-level"}, arg: "LEVEL", nvals: 1,
		help: "torpor: log level of an embedded coordinator (default warn)",
		set:  func(o *Options, _ string, v []string) error { o.LogLevel = v[0]; return nil }},
	{names: []string{"-h", "--help"},
		help: "show this help",
		set:  func(*Options, string, []string) error { return ErrHelp }},
}

// flagIndex maps a flag name without its leading dashes to its spec.
var flagIndex = func() map[string]*flagSpec {
	m := make(map[string]*flagSpec)
	for i := range flags {
		for _, n := range flags[i].names {
			m[strings.TrimLeft(n, "-")] = &flags[i]
		}
	}
	return m
}()

// Parse reads the arguments that follow `torpor run`. Flags come first; the
// first argument that is not a flag (or the argument after "--") is the
// program, and everything after it belongs to the program, as with mpirun.
// Flags take their value as the next argument or after "=" (--np=4); --mca
// takes two. Errors wrap ErrUsage, ErrNoProgram or ErrHelp.
func Parse(args []string) (Options, error) {
	o := Options{MapBy: MapBySlot, CheckpointSignal: syscall.SIGUSR1}
	seen := make(map[*flagSpec]string)
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			if a == "-" {
				return Options{}, usagef("stray %q: a program cannot be named -", a)
			}
			break
		}
		name, val, hasVal := strings.Cut(a, "=")
		key := strings.TrimPrefix(strings.TrimPrefix(name, "-"), "-")
		spec := flagIndex[key]
		if spec == nil || key == "" || strings.HasPrefix(key, "-") {
			return Options{}, usagef("unknown flag %q", name)
		}
		if prev, ok := seen[spec]; ok && !spec.repeat {
			return Options{}, usagef("%s given twice (first as %s); give it once", name, prev)
		}
		seen[spec] = name
		i++
		var vals []string
		switch {
		case spec.nvals == 0 && hasVal:
			return Options{}, usagef("%s takes no value, got %q", name, a)
		case hasVal && spec.nvals == 1:
			vals = []string{val}
		case hasVal:
			return Options{}, usagef("%s takes %d values (%s %s), not %s=...", name, spec.nvals, name, spec.arg, name)
		default:
			for len(vals) < spec.nvals {
				if i >= len(args) {
					return Options{}, usagef("%s needs a value: %s %s", name, name, spec.arg)
				}
				v := args[i]
				if len(v) > 1 && v[0] == '-' && !spec.dashOK {
					return Options{}, usagef("%s needs a value (%s %s), got flag %q", name, name, spec.arg, v)
				}
				vals = append(vals, v)
				i++
			}
		}
		for _, v := range vals {
			if v == "" && spec.nvals > 0 {
				return Options{}, usagef("%s needs a non-empty value: %s %s", name, name, spec.arg)
			}
		}
		if err := spec.set(&o, name, vals); err != nil {
			return Options{}, err
		}
	}
	if i >= len(args) {
		return Options{}, fmt.Errorf("%w: give one after the flags, e.g. `torpor run -n 4 ./app`", ErrNoProgram)
	}
	o.Program = args[i]
	o.Args = append([]string{}, args[i+1:]...)
	if o.Program == "" {
		return Options{}, fmt.Errorf("%w: the program name is empty", ErrNoProgram)
	}
	return o, nil
}

func parseCount(flag, v, what string, min int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, usagef("%s %s: not a number; give %s", flag, v, what)
	}
	if n < min {
		return 0, usagef("%s %d: must be at least %d", flag, n, min)
	}
	return n, nil
}

func setNP(o *Options, flag string, v []string) error {
	n, err := parseCount(flag, v[0], "the number of ranks, e.g. "+flag+" 4", 1)
	if err == nil && n > MaxRanks {
		return usagef("%s %d: at most %d ranks", flag, n, MaxRanks)
	}
	if err != nil {
		return err
	}
	o.NP = n
	return nil
}

func setRestarts(o *Options, flag string, v []string) error {
	n, err := parseCount(flag, v[0], "how many restarts, e.g. "+flag+" 3", 0)
	if err != nil {
		return err
	}
	o.RestartOnFailure = n
	return nil
}

func setHost(o *Options, flag string, v []string) error {
	hs, err := ParseHostList(v[0])
	if err != nil {
		return usagef("%s: %v", flag, err)
	}
	o.Hosts = MergeHosts(append(o.Hosts, hs...))
	return nil
}

func setMapBy(o *Options, flag string, v []string) error {
	policy, mods, _ := strings.Cut(strings.ToLower(v[0]), ":")
	switch policy {
	case MapBySlot, MapByNode:
		o.MapBy = policy
	default:
		return usagef("%s %s: torpor maps by slot or node", flag, v[0])
	}
	if mods == "" {
		return nil
	}
	for _, m := range strings.Split(mods, ",") {
		switch m {
		case "oversubscribe":
			o.Oversubscribe = true
		case "nooversubscribe":
			o.Oversubscribe = false
		default:
			return usagef("%s %s: unsupported modifier %q; only :oversubscribe is supported", flag, v[0], m)
		}
	}
	return nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func setEnv(o *Options, flag string, v []string) error {
	name, value, hasValue := strings.Cut(v[0], "=")
	if !envName.MatchString(name) {
		return usagef("%s %s: %q is not an environment variable name (letters, digits, _)", flag, v[0], name)
	}
	e := EnvVar{Name: name, Value: value, FromCaller: !hasValue}
	for i := range o.Env {
		if o.Env[i].Name == name {
			o.Env[i] = e
			return nil
		}
	}
	o.Env = append(o.Env, e)
	return nil
}

var mcaKey = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

func setMCA(o *Options, flag string, v []string) error {
	key, val := v[0], v[1]
	if !mcaKey.MatchString(key) {
		return usagef("%s %s %s: %q is not an MCA parameter name (letters, digits, _)", flag, key, val, key)
	}
	if key == "crs" {
		switch val {
		case "criu":
			o.Checkpointing = true
		case "none":
		default:
			return usagef("%s crs %s: torpor checkpoints with CRIU; use %s crs criu", flag, val, flag)
		}
		return nil
	}
	for i := range o.MCA {
		if o.MCA[i].Key == key {
			o.MCA[i].Value = val
			return nil
		}
	}
	o.MCA = append(o.MCA, MCAParam{Key: key, Value: val})
	return nil
}

func setAM(o *Options, flag string, v []string) error {
	for _, f := range strings.Split(v[0], ",") {
		if f != "ft-enable-cr" {
			return usagef("%s %s: torpor reads no aggregate MCA files; pass parameters with --mca KEY VALUE (only ft-enable-cr is understood)", flag, f)
		}
		o.Checkpointing = true
	}
	return nil
}

// KeepDefaults applies the host configuration's job-wide defaults: its keep
// paths join the job's own --keep paths, and max (e.g. "4G") is --keep-max
// unless the job gave one.
func (o *Options) KeepDefaults(paths []string, max string) error {
	for _, p := range paths {
		if p == "" || strings.IndexByte(p, 0) >= 0 {
			return fmt.Errorf("keep in the configuration: %q is not a path", p)
		}
		if !slices.Contains(o.Keep, p) {
			o.Keep = append(o.Keep, p)
		}
	}
	if max != "" && o.KeepMax == 0 {
		n, err := ParseSize(max)
		if err != nil || n <= 0 {
			return fmt.Errorf("keep_max in the configuration: %q: give a size in bytes, or with a suffix K, M, G or T, e.g. 4G", max)
		}
		o.KeepMax = n
	}
	return nil
}

func setKeepMax(o *Options, flag string, v []string) error {
	n, err := ParseSize(v[0])
	if err != nil || n <= 0 {
		return usagef("%s %s: give a size in bytes, or with a suffix K, M, G or T (powers of 1024), e.g. 4G", flag, v[0])
	}
	o.KeepMax = n
	return nil
}

// ParseSize reads a byte count with an optional K, M, G or T suffix.
func ParseSize(s string) (int64, error) {
	shift := 0
	switch {
	case strings.HasSuffix(s, "K"):
		shift = 10
	case strings.HasSuffix(s, "M"):
		shift = 20
	case strings.HasSuffix(s, "G"):
		shift = 30
	case strings.HasSuffix(s, "T"):
		shift = 40
	}
	if shift > 0 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("bad size")
	}
	return n << shift, nil
}

func setInterval(o *Options, flag string, v []string) error {
	d, err := parseDuration(v[0])
	if err != nil {
		return usagef("%s %s: %v; give e.g. 30m, 90s or 1800 (seconds)", flag, v[0], err)
	}
	if d < 0 {
		return usagef("%s %s: must not be negative", flag, v[0])
	}
	o.CheckpointInterval = d
	o.Checkpointing = true
	return nil
}

// parseDuration accepts a Go duration (30m, 1h30m) or whole seconds (1800).
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > int64(1<<62)/int64(time.Second) || n < -int64(1<<62)/int64(time.Second) {
			return 0, fmt.Errorf("out of range")
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("not a duration")
	}
	return d, nil
}

// checkpointSignals are the signals that may mean "checkpoint now". INT and
// TERM stop the job; KILL and STOP cannot be caught.
var checkpointSignals = map[string]syscall.Signal{
	"USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
	"HUP":  syscall.SIGHUP,
}

func setSignal(o *Options, flag string, v []string) error {
	s := v[0]
	spec, lead, hasLead := strings.Cut(s, "@")
	if p, rest, ok := strings.Cut(spec, ":"); ok {
		if p != "B" && p != "R" && p != "RB" && p != "BR" {
			return usagef("%s %s: prefix %q is not Slurm's B: or R:", flag, s, p+":")
		}
		spec = rest
	}
	sig, err := parseSignal(spec)
	if err != nil {
		return usagef("%s %s: %v", flag, s, err)
	}
	o.CheckpointSignal = sig
	if hasLead {
		n, err := strconv.Atoi(lead)
		if err != nil || n < 0 || n > 65535 {
			return usagef("%s %s: @%s: give seconds, 0-65535 (Slurm's sig_time)", flag, s, lead)
		}
		o.SignalLead = time.Duration(n) * time.Second
	}
	return nil
}

// ParseCheckpointSignal reads a --checkpoint-signal value as `torpor run`
// does (USR1, SIGUSR2, B:HUP@60, ...).
func ParseCheckpointSignal(s string) (syscall.Signal, error) {
	var o Options
	if err := setSignal(&o, "--checkpoint-signal", []string{s}); err != nil {
		return 0, err
	}
	return o.CheckpointSignal, nil
}

// ParseInterval reads a --checkpoint-interval value as `torpor run` does.
func ParseInterval(s string) (time.Duration, error) {
	var o Options
	if err := setInterval(&o, "--checkpoint-interval", []string{s}); err != nil {
		return 0, err
	}
	return o.CheckpointInterval, nil
}

func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		for _, sig := range checkpointSignals {
			if int(sig) == n {
				return sig, nil
			}
		}
		return 0, fmt.Errorf("signal %d cannot mean checkpoint; use USR1, USR2 or HUP", n)
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := checkpointSignals[name]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("signal %q cannot mean checkpoint; use USR1, USR2 or HUP (INT and TERM stop the job)", s)
}

func setMPI(o *Options, flag string, v []string) error {
	switch strings.ToLower(v[0]) {
	case "openmpi", "ompi", "open-mpi":
		o.MPI = MPIOpenMPI
	case "mpich":
		o.MPI = MPIMPICH
	default:
		return usagef("%s %s: torpor knows openmpi and mpich", flag, v[0])
	}
	return nil
}

func setJobName(o *Options, flag string, v []string) error {
	if !agentapi.ValidName(v[0]) {
		return usagef("%s %q: %s", flag, v[0], agentapi.NameRule)
	}
	o.JobName = v[0]
	return nil
}

// Usage is the help text of `torpor run`, listing every flag.
func Usage() string {
	var b strings.Builder
	b.WriteString("Usage: torpor run [flags] [--] PROGRAM [ARGS...]\n\n")
	b.WriteString("Runs an MPI program under torpor. Without --host or --hostfile the job runs on\n")
	b.WriteString("this machine, in one sandbox. Long flags take one or two dashes, as with mpirun;\n")
	b.WriteString("everything after PROGRAM belongs to PROGRAM.\n\nFlags:\n")
	for _, f := range flags {
		left := "  " + strings.Join(f.names, ", ")
		if f.arg != "" {
			left += " " + f.arg
		}
		if len(left) > 34 {
			fmt.Fprintf(&b, "%s\n%36s%s\n", left, "", f.help)
		} else {
			fmt.Fprintf(&b, "%-36s%s\n", left, f.help)
		}
	}
	b.WriteString("\nSlurm: SLURM_RESTART_COUNT > 0 (after --requeue) means restart from the last checkpoint.\n")
	return b.String()
}
