package launch

import (
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// base is what Parse returns for `torpor run ./app` before a case's edits.
func base() Options {
	return Options{MapBy: MapBySlot, CheckpointSignal: syscall.SIGUSR1, Program: "./app", Args: []string{}}
}

func TestParseGood(t *testing.T) {
	tests := []struct {
		name string
		args string
		want func(o *Options)
	}{
		{"embedded default", "-n 4 ./app", func(o *Options) { o.NP = 4 }},
		{"np single dash", "-np 4 ./app", func(o *Options) { o.NP = 4 }},
		{"np double dash", "--np 4 ./app", func(o *Options) { o.NP = 4 }},
		{"np equals", "--np=4 ./app", func(o *Options) { o.NP = 4 }},
		{"n equals single dash", "-n=2 ./app", func(o *Options) { o.NP = 2 }},
		{"c is np", "-c 3 ./app", func(o *Options) { o.NP = 3 }},
		{"no n", "./app", func(o *Options) {}},
		{"program args belong to program", "-n 2 ./app -n 5 --host x --mca a b", func(o *Options) {
			o.NP = 2
			o.Args = []string{"-n", "5", "--host", "x", "--mca", "a", "b"}
		}},
		{"double dash separator", "-n 2 -- ./app -x", func(o *Options) { o.NP = 2; o.Args = []string{"-x"} }},
		{"double dash allows dash program", "-- -weird a", func(o *Options) { o.Program = "-weird"; o.Args = []string{"a"} }},
		{"double dash inside program args kept", "./app -- b", func(o *Options) { o.Args = []string{"--", "b"} }},
		{"host list", "--host h1:2,h2 ./app", func(o *Options) {
			o.Hosts = []HostSlots{{Host: "h1", Slots: 2}, {Host: "h2", Slots: 1}}
		}},
		{"host equals", "--host=h1:2,h2:3 ./app", func(o *Options) {
			o.Hosts = []HostSlots{{Host: "h1", Slots: 2}, {Host: "h2", Slots: 3}}
		}},
		{"host single dash and H, repeated, merged", "-host a:2 -H b,a ./app", func(o *Options) {
			o.Hosts = []HostSlots{{Host: "a", Slots: 3}, {Host: "b", Slots: 1}}
		}},
		{"hostfile", "--hostfile hosts ./app", func(o *Options) { o.Hostfile = "hosts" }},
		{"hostfile single dash", "-hostfile hosts ./app", func(o *Options) { o.Hostfile = "hosts" }},
		{"machinefile", "-machinefile m ./app", func(o *Options) { o.Hostfile = "m" }},
		{"map-by node", "--map-by node ./app", func(o *Options) { o.MapBy = MapByNode }},
		{"map-by NODE upper", "--map-by NODE ./app", func(o *Options) { o.MapBy = MapByNode }},
		{"map-by slot:oversubscribe", "--map-by slot:OVERSUBSCRIBE ./app", func(o *Options) { o.Oversubscribe = true }},
		{"bynode", "-bynode ./app", func(o *Options) { o.MapBy = MapByNode }},
		{"oversubscribe", "--oversubscribe ./app", func(o *Options) { o.Oversubscribe = true }},
		{"oversubscribe single dash", "-oversubscribe ./app", func(o *Options) { o.Oversubscribe = true }},
		{"x repeated", "-x A -x B=1 -x C= ./app", func(o *Options) {
			o.Env = []EnvVar{{Name: "A", FromCaller: true}, {Name: "B", Value: "1"}, {Name: "C", Value: ""}}
		}},
		{"x value with equals", "-x OPTS=a=b ./app", func(o *Options) { o.Env = []EnvVar{{Name: "OPTS", Value: "a=b"}} }},
		{"x later wins", "-x A=1 -x A=2 ./app", func(o *Options) { o.Env = []EnvVar{{Name: "A", Value: "2"}} }},
		{"tag-output", "--tag-output ./app", func(o *Options) { o.TagOutput = true }},
		{"wdir", "-wdir /tmp ./app", func(o *Options) { o.Wdir = "/tmp" }},
		{"wd", "--wd=/tmp ./app", func(o *Options) { o.Wdir = "/tmp" }},
		{"mca ordered, later value wins", "--mca btl tcp,self -mca oob tcp --mca btl ^openib ./app", func(o *Options) {
			o.MCA = []MCAParam{{Key: "btl", Value: "^openib"}, {Key: "oob", Value: "tcp"}}
		}},
		{"mca crs criu means checkpointing", "--mca crs criu ./app", func(o *Options) { o.Checkpointing = true }},
		{"mca crs none", "--mca crs none ./app", func(o *Options) {}},
		{"am ft-enable-cr", "-am ft-enable-cr ./app", func(o *Options) { o.Checkpointing = true }},
		{"checkpoint dir", "--checkpoint-dir /ck ./app", func(o *Options) { o.CheckpointDir = "/ck"; o.Checkpointing = true }},
		{"interval duration", "--checkpoint-interval 30m ./app", func(o *Options) {
			o.CheckpointInterval = 30 * time.Minute
			o.Checkpointing = true
		}},
		{"interval seconds", "--checkpoint-interval=90 ./app", func(o *Options) {
			o.CheckpointInterval = 90 * time.Second
			o.Checkpointing = true
		}},
		{"slurm signal", "--signal=B:USR1@300 ./app", func(o *Options) { o.SignalLead = 300 * time.Second }},
		{"signal usr2 no prefix", "--signal SIGUSR2 ./app", func(o *Options) { o.CheckpointSignal = syscall.SIGUSR2 }},
		{"signal number", "--signal 12@60 ./app", func(o *Options) {
			o.CheckpointSignal = syscall.SIGUSR2
			o.SignalLead = time.Minute
		}},
		{"restart on failure", "--restart-on-failure 3 ./app", func(o *Options) { o.RestartOnFailure = 3 }},
		{"restart on failure zero", "--restart-on-failure 0 ./app", func(o *Options) {}},
		{"mpi mpich", "--mpi mpich ./app", func(o *Options) { o.MPI = MPIMPICH }},
		{"mpi ompi alias", "--mpi=OMPI ./app", func(o *Options) { o.MPI = MPIOpenMPI }},
		{"job name", "--job-name ring-1 ./app", func(o *Options) { o.JobName = "ring-1" }},
		{"allow-run-as-root ignored", "--allow-run-as-root ./app", func(o *Options) {}},
		{"bare program in PATH", "-n 2 hostname", func(o *Options) { o.NP = 2; o.Program = "hostname" }},
		{"everything", "-np 8 --host a:4,b:4 --map-by node --oversubscribe -x PATH -x OMP_NUM_THREADS=1 --tag-output " +
			"--wdir /w --mca btl tcp,self --mca crs criu --checkpoint-dir /ck --checkpoint-interval 1h " +
			"--restart-on-failure 2 --mpi openmpi --job-name j ./ring 100",
			func(o *Options) {
				*o = Options{NP: 8, Hosts: []HostSlots{{Host: "a", Slots: 4}, {Host: "b", Slots: 4}}, MapBy: MapByNode,
					Oversubscribe: true, Env: []EnvVar{{Name: "PATH", FromCaller: true}, {Name: "OMP_NUM_THREADS", Value: "1"}},
					TagOutput: true, Wdir: "/w", MCA: []MCAParam{{Key: "btl", Value: "tcp,self"}}, Checkpointing: true,
					CheckpointDir: "/ck", CheckpointInterval: time.Hour, CheckpointSignal: syscall.SIGUSR1,
					RestartOnFailure: 2, MPI: MPIOpenMPI, JobName: "j", Program: "./ring", Args: []string{"100"}}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(strings.Fields(tt.args))
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.args, err)
			}
			want := base()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tt.args, got, want)
			}
		})
	}
}

func TestParseBad(t *testing.T) {
	tests := []struct {
		name string
		args []string
		is   error
		msg  []string // substrings the message must contain
	}{
		{"nothing", nil, ErrNoProgram, []string{"no program to run", "torpor run -n 4 ./app"}},
		{"flags only", []string{"-n", "4"}, ErrNoProgram, []string{"no program"}},
		{"separator only", []string{"-n", "4", "--"}, ErrNoProgram, []string{"no program"}},
		{"empty program", []string{"--", ""}, ErrNoProgram, []string{"empty"}},
		{"unknown flag", []string{"--frobnicate", "./app"}, ErrUsage, []string{`unknown flag "--frobnicate"`, "torpor run -h"}},
		{"unknown flag with value", []string{"--bind-to=core", "./app"}, ErrUsage, []string{`unknown flag "--bind-to"`}},
		{"triple dash", []string{"---np", "2", "./app"}, ErrUsage, []string{"unknown flag"}},
		{"lone dash", []string{"-", "./app"}, ErrUsage, []string{"cannot be named -"}},
		{"n zero", []string{"-n", "0", "./app"}, ErrUsage, []string{"-n 0", "at least 1"}},
		{"n negative", []string{"-np", "-3", "./app"}, ErrUsage, []string{"-np -3", "at least 1"}},
		{"n not a number", []string{"-n", "four", "./app"}, ErrUsage, []string{"-n four: not a number", "-n 4"}},
		{"n too big", []string{"-n", "99999999999", "./app"}, ErrUsage, []string{"at most"}},
		{"n missing value", []string{"-n"}, ErrUsage, []string{"-n needs a value"}},
		{"n given twice", []string{"-n", "2", "-np", "3", "./app"}, ErrUsage, []string{"-np given twice", "first as -n"}},
		{"n empty equals", []string{"--np=", "./app"}, ErrUsage, []string{"non-empty"}},
		{"host missing value", []string{"--host"}, ErrUsage, []string{"--host needs a value"}},
		{"host value is a flag", []string{"--host", "--oversubscribe", "./app"}, ErrUsage, []string{"--host needs a value", `got flag "--oversubscribe"`}},
		{"host bad count", []string{"--host", "a:x", "./app"}, ErrUsage, []string{"--host", `slot count "x" is not a number`}},
		{"host zero count", []string{"--host", "a:0", "./app"}, ErrUsage, []string{"between 1 and"}},
		{"host empty item", []string{"--host", "a,,b", "./app"}, ErrUsage, []string{"empty host at position 2"}},
		{"host no name", []string{"--host", ":2", "./app"}, ErrUsage, []string{"missing host name"}},
		{"host with user", []string{"--host", "me@a", "./app"}, ErrUsage, []string{"user@host is not supported"}},
		{"hostfile twice", []string{"--hostfile", "a", "-machinefile", "b", "./app"}, ErrUsage, []string{"given twice"}},
		{"switch with value", []string{"--oversubscribe=yes", "./app"}, ErrUsage, []string{"takes no value"}},
		{"map-by unknown", []string{"--map-by", "core", "./app"}, ErrUsage, []string{"slot or node"}},
		{"map-by ppr", []string{"--map-by", "ppr:2:node", "./app"}, ErrUsage, []string{"slot or node"}},
		{"map-by bad modifier", []string{"--map-by", "node:PE=2", "./app"}, ErrUsage, []string{"only :oversubscribe"}},
		{"x missing", []string{"-x"}, ErrUsage, []string{"-x needs a value"}},
		{"x bad name", []string{"-x", "1A=2", "./app"}, ErrUsage, []string{"not an environment variable name"}},
		{"x empty name", []string{"-x", "=v", "./app"}, ErrUsage, []string{"not an environment variable name"}},
		{"mca one value", []string{"--mca", "btl"}, ErrUsage, []string{"--mca needs a value: --mca KEY VALUE"}},
		{"mca one value then program", []string{"--mca", "btl", "./app"}, ErrNoProgram, []string{"no program"}},
		{"mca equals", []string{"--mca=btl", "tcp", "./app"}, ErrUsage, []string{"takes 2 values"}},
		{"mca bad key", []string{"--mca", "a.b", "c", "./app"}, ErrUsage, []string{"not an MCA parameter name"}},
		{"mca crs other", []string{"--mca", "crs", "blcr", "./app"}, ErrUsage, []string{"--mca crs criu"}},
		{"am other", []string{"-am", "myparams.conf", "./app"}, ErrUsage, []string{"--mca KEY VALUE"}},
		{"interval bad", []string{"--checkpoint-interval", "soon", "./app"}, ErrUsage, []string{"not a duration", "30m"}},
		{"interval negative", []string{"--checkpoint-interval", "-5s", "./app"}, ErrUsage, []string{"negative"}},
		{"restarts negative", []string{"--restart-on-failure", "-1", "./app"}, ErrUsage, []string{"at least 0"}},
		{"restarts nan", []string{"--restart-on-failure", "x", "./app"}, ErrUsage, []string{"not a number"}},
		{"signal term", []string{"--signal=B:TERM@60", "./app"}, ErrUsage, []string{"USR1, USR2 or HUP"}},
		{"signal kill number", []string{"--signal", "9", "./app"}, ErrUsage, []string{"signal 9 cannot mean checkpoint"}},
		{"signal bad prefix", []string{"--signal=X:USR1", "./app"}, ErrUsage, []string{"B: or R:"}},
		{"signal bad lead", []string{"--signal=USR1@soon", "./app"}, ErrUsage, []string{"give seconds"}},
		{"mpi unknown", []string{"--mpi", "mvapich", "./app"}, ErrUsage, []string{"openmpi and mpich"}},
		{"job name bad", []string{"--job-name", "a b", "./app"}, ErrUsage, []string{"letters, digits"}},
		{"help", []string{"-h"}, ErrHelp, []string{"help"}},
		{"help long after flags", []string{"-n", "2", "--help", "./app"}, ErrHelp, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := Parse(tt.args)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", tt.args, o)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("Parse(%q) error %q does not match %v", tt.args, err, tt.is)
			}
			for _, s := range tt.msg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Parse(%q) error %q lacks %q", tt.args, err, s)
				}
			}
		})
	}
}

func TestUsageListsEveryFlag(t *testing.T) {
	u := Usage()
	owner := map[string]int{}
	for i, f := range flags {
		if f.help == "" {
			t.Errorf("flag %v has no help", f.names)
		}
		for _, n := range f.names {
			key := strings.TrimLeft(n, "-")
			if j, ok := owner[key]; ok && j != i {
				t.Errorf("flag name %q belongs to two flags: %v and %v", key, flags[j].names, f.names)
			}
			owner[key] = i
			if !strings.Contains(u, n) {
				t.Errorf("Usage() lacks %q", n)
			}
		}
	}
	for _, want := range []string{"--checkpoint-interval", "--signal", "--restart-on-failure", "--mpi", "-am", "--tag-output", "PROGRAM"} {
		if !strings.Contains(u, want) {
			t.Errorf("Usage() lacks %q", want)
		}
	}
}

// TestParseDoesNotAlias checks that Args does not share the caller's slice.
func TestParseDoesNotAlias(t *testing.T) {
	args := []string{"./app", "a", "b"}
	o, err := Parse(args)
	if err != nil {
		t.Fatal(err)
	}
	args[1] = "changed"
	if o.Args[0] != "a" {
		t.Errorf("Args aliases the input: %q", o.Args)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"-n 4 ./app", "--host=a:2,b --map-by node:oversubscribe ./app x", "--mca btl tcp -x A=1 -- ./app",
		"--signal=B:USR1@300 --checkpoint-interval 1h ./app", "-am ft-enable-cr", "--np=", "-",
	} {
		f.Add(strings.ReplaceAll(s, " ", "\x00"))
	}
	f.Fuzz(func(t *testing.T, joined string) {
		args := strings.Split(joined, "\x00")
		o, err := Parse(args)
		if err != nil {
			if !errors.Is(err, ErrUsage) && !errors.Is(err, ErrNoProgram) && !errors.Is(err, ErrHelp) {
				t.Fatalf("Parse(%q): error %q wraps no sentinel", args, err)
			}
			return
		}
		if o.Program == "" {
			t.Fatalf("Parse(%q) succeeded without a program", args)
		}
		if o.NP < 0 || o.NP > MaxRanks {
			t.Fatalf("Parse(%q): NP %d", args, o.NP)
		}
		if o.MapBy != MapBySlot && o.MapBy != MapByNode {
			t.Fatalf("Parse(%q): MapBy %q", args, o.MapBy)
		}
		// Whatever Parse accepts, Place handles: a plan or "not enough slots".
		if o.NP > 0 && o.NP <= 10000 {
			p, err := Place(o.NP, o.Hosts, o.MapBy, o.Oversubscribe)
			if err != nil && !errors.Is(err, ErrNotEnoughSlots) {
				t.Fatalf("Place after Parse(%q): %v", args, err)
			}
			if err == nil && p.NP() != o.NP {
				t.Fatalf("Place after Parse(%q) placed %d of %d ranks", args, p.NP(), o.NP)
			}
		}
	})
}
