package launch

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/pmix/jobspec"
)

// testMachine has cpus cores, $HOME set and nothing else.
func testMachine(cpus int) machine {
	env := map[string]string{"HOME": "/home/u"}
	return machine{
		uid: 1234,
		lookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
		environ: []string{"HOME=/home/u", "LANG=C"},
		path:    "/usr/bin:/bin",
		cpus:    cpus,
		suffix:  "abc123",
	}
}

func parseArgs(t *testing.T, args string) Options {
	t.Helper()
	o, err := Parse(strings.Fields(args))
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return o
}

// pmixdSpec decodes the pmixd job spec a job-node carries.
func pmixdSpec(t *testing.T, n agentapi.NodeSpec) *jobspec.JobSpec {
	t.Helper()
	js, err := jobspec.FromEnv(n.Env)
	if err != nil || js == nil {
		t.Fatalf("job-node %s: no pmixd spec in %q: %v", n.Name, n.Env, err)
	}
	return js
}

func TestJobSpecOpenMPI(t *testing.T) {
	o := parseArgs(t, "--mpi openmpi -n 4 --host h1:2,h2:2 --job-name ring -x HOME -x A=1 --mca btl_tcp_eager_limit 64 --wdir /w --tag-output ./app -i 3")
	spec, warnings, err := o.jobSpec("/w/app", testMachine(8))
	if err != nil || len(warnings) != 0 {
		t.Fatalf("jobSpec: %v, warnings %q", err, warnings)
	}
	if spec.ID != "ring" || spec.Owner != 1234 || len(spec.Nodes) != 2 {
		t.Fatalf("spec = %+v", spec)
	}
	wantEnv := []string{
		"OMPI_MCA_btl=self,vader,tcp", "OMPI_MCA_btl_tcp_if_include=eth0", "OMPI_MCA_oob_tcp_if_include=eth0",
		"HOME=/home/u", "A=1", "OMPI_MCA_btl_tcp_eager_limit=64",
	}
	for i, host := range []string{"h1", "h2"} {
		n := spec.Nodes[i]
		name, hostname := []string{"n0", "n1"}[i], []string{"ring-n0", "ring-n1"}[i]
		if n.Name != name || n.Host != host || n.Hostname != hostname || n.Dir != "/w" ||
			!reflect.DeepEqual(n.Argv, []string{"pmixd"}) || len(n.Env) != 2 || n.Env[1] != "PATH=/usr/bin:/bin" {
			t.Errorf("job-node %d = %+v", i, n)
		}
		js := pmixdSpec(t, n)
		if js.Job != "ring" || js.NodeIndex != i || js.Wire != jobspec.WirePMIx || js.Dir != "/w" || !js.TagOutput {
			t.Errorf("job-node %d: pmixd spec %+v", i, js)
		}
		if !reflect.DeepEqual(js.Argv, []string{"/w/app", "-i", "3"}) {
			t.Errorf("job-node %d: argv %q", i, js.Argv)
		}
		if !reflect.DeepEqual(js.Env, []string{"HOME=/home/u", "LANG=C"}) {
			t.Errorf("job-node %d: base env %q, want the launcher's", i, js.Env)
		}
		if !reflect.DeepEqual(js.ExtraEnv, wantEnv) {
			t.Errorf("job-node %d: extra env\n got %q\nwant %q", i, js.ExtraEnv, wantEnv)
		}
		wantNodes := []jobspec.Node{{Hostname: "ring-n0", Ranks: []int{0, 1}}, {Hostname: "ring-n1", Ranks: []int{2, 3}}}
		if !reflect.DeepEqual(js.Nodes, wantNodes) {
			t.Errorf("job-node %d: nodes %+v, want %+v", i, js.Nodes, wantNodes)
		}
	}
}

func TestJobSpecMPICH(t *testing.T) {
	// Oversubscribed, but MPICH is not told to yield: that is Open MPI's knob.
	o := parseArgs(t, "--mpi mpich -n 4 --oversubscribe --job-name st ./app")
	spec, _, err := o.jobSpec("/bin/app", testMachine(2))
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Nodes) != 1 || spec.Nodes[0].Host != LocalHost || spec.Nodes[0].Hostname != "st-n0" {
		t.Fatalf("nodes = %+v", spec.Nodes)
	}
	js := pmixdSpec(t, spec.Nodes[0])
	if js.Wire != jobspec.WirePMI1 {
		t.Errorf("wire = %q, want %q", js.Wire, jobspec.WirePMI1)
	}
	if want := []string{"UCX_TLS=tcp,self", "UCX_NET_DEVICES=eth0"}; !reflect.DeepEqual(js.ExtraEnv, want) {
		t.Errorf("extra env %q, want %q", js.ExtraEnv, want)
	}
	if want := []int{0, 1, 2, 3}; !reflect.DeepEqual(js.Nodes[0].Ranks, want) {
		t.Errorf("ranks %v, want %v", js.Nodes[0].Ranks, want)
	}
}

func TestJobSpecYieldWhenIdle(t *testing.T) {
	const yield = "OMPI_MCA_mpi_yield_when_idle=1"
	tests := []struct {
		args  string
		cpus  int
		yield []bool // per job-node
	}{
		{"-n 2 ./app", 2, []bool{false}},
		{"-n 4 ./app", 2, []bool{true}},                  // more ranks than cores, no flag needed
		{"-n 1 --oversubscribe ./app", 8, []bool{false}}, // allowed, not needed: as mpirun
		{"-n 2 --oversubscribe ./app", 2, []bool{false}},
		{"-n 5 --host a:2,b:2 --oversubscribe ./app", 8, []bool{true, false}}, // a has 3 ranks for 2 slots
		{"-n 3 --host a:2,b:2 ./app", 1, []bool{true, false}},                 // a has 2 ranks, b 1
		{"-n 3 --host a:2,b:2 ./app", 2, []bool{false, false}},
	}
	for _, tt := range tests {
		o := parseArgs(t, "--mpi openmpi "+tt.args)
		spec, _, err := o.jobSpec("/bin/app", testMachine(tt.cpus))
		if err != nil {
			t.Fatalf("%s: %v", tt.args, err)
		}
		if len(spec.Nodes) != len(tt.yield) {
			t.Fatalf("%s: %d job-nodes, want %d", tt.args, len(spec.Nodes), len(tt.yield))
		}
		for i, want := range tt.yield {
			if got := slices.Contains(pmixdSpec(t, spec.Nodes[i]).ExtraEnv, yield); got != want {
				t.Errorf("%s on %d cpus: job-node %d has %s: %v, want %v", tt.args, tt.cpus, i, yield, got, want)
			}
		}
	}
}

func TestJobSpecPlain(t *testing.T) {
	o := parseArgs(t, "--plain -x A=1 --wdir /w ./app x")
	spec, _, err := o.jobSpec("/w/app", testMachine(4))
	if err != nil {
		t.Fatal(err)
	}
	want := coordinator.JobSpec{ID: "app-abc123", Owner: 1234, Nodes: []agentapi.NodeSpec{{
		Name: "n0", Host: LocalHost, Argv: []string{"/w/app", "x"}, Dir: "/w",
		Env: []string{"HOME=/home/u", "LANG=C", "A=1"},
	}}}
	if !reflect.DeepEqual(spec, want) {
		t.Errorf("spec\n got %+v\nwant %+v", spec, want)
	}

	o = parseArgs(t, "--plain --host h1,h2 ./app")
	spec, _, err = o.jobSpec("/bin/app", testMachine(4))
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Nodes) != 2 || spec.Nodes[0].Host != "h1" || spec.Nodes[1].Host != "h2" || spec.Nodes[1].Name != "n1" {
		t.Fatalf("nodes = %+v", spec.Nodes)
	}
	// Each job-node has its own environment: changing one leaves the other.
	spec.Nodes[0].Env[0] = "X=1"
	if spec.Nodes[1].Env[0] != "HOME=/home/u" {
		t.Errorf("job-nodes share their environment: %q", spec.Nodes[1].Env)
	}
}

func TestJobSpecWarnings(t *testing.T) {
	script := filepath.Join(t.TempDir(), "job.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Warnings come in order, and also with an error.
	o := parseArgs(t, "-x NOPE -n 3 --host a:1 "+script)
	spec, warnings, err := o.jobSpec(script, testMachine(4))
	if !errors.Is(err, ErrNotEnoughSlots) {
		t.Errorf("err = %v, want ErrNotEnoughSlots", err)
	}
	if len(spec.Nodes) != 0 {
		t.Errorf("job-nodes despite the error: %+v", spec.Nodes)
	}
	if len(warnings) != 2 || warnings[0] != "warning: -x NOPE: not set here, not exported" ||
		!strings.HasSuffix(warnings[1], "assuming Open MPI — pass --mpi mpich if the program uses MPICH") {
		t.Errorf("warnings = %q", warnings)
	}
}

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"ring.openmpi":          "ring.openmpi",
		"/usr/bin/my app!":      "my_app_",
		".hidden":               "job.hidden",
		"-x":                    "job-x",
		"_":                     "job_",
		"/":                     "job_",
		"lammps-2024_stable":    "lammps-2024_stable",
		strings.Repeat("a", 50): strings.Repeat("a", 40),
	} {
		if got := sanitize(in, 40); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestJobIDs: a --job-name is the job's id as given, up to the longest name
// allowed; a generated id (program name + suffix) is never longer.
func TestJobIDs(t *testing.T) {
	long := strings.Repeat("n", agentapi.MaxNameLen)
	o := parseArgs(t, "--plain --job-name "+long+" ./app")
	spec, _, err := o.jobSpec("/w/app", testMachine(1))
	if err != nil || spec.ID != long {
		t.Fatalf("--job-name of %d characters: id %q (%v), want it unchanged", len(long), spec.ID, err)
	}
	o = parseArgs(t, "--plain ./"+long+"xyz")
	spec, _, err = o.jobSpec("/w/"+long+"xyz", testMachine(1))
	if err != nil || !strings.HasSuffix(spec.ID, "-abc123") || !agentapi.ValidName(spec.ID) || len(spec.ID) != agentapi.MaxNameLen {
		t.Fatalf("generated id for a long program name: %q (%d characters, %v)", spec.ID, len(spec.ID), err)
	}
}

// TestKeep: --keep paths reach every job-node absolute, relative ones from
// --wdir (else the current directory); --keep-max takes a suffix.
func TestKeep(t *testing.T) {
	m := testMachine(2)
	m.cwd = "/home/u/run"
	o := parseArgs(t, "--plain --host h1,h2 --keep out --keep /abs/log --keep ../x/./y --keep-max 4G ./app")
	spec, _, err := o.jobSpec("/bin/app", m)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/home/u/run/out", "/abs/log", "/home/u/x/y"}
	for _, n := range spec.Nodes {
		if !reflect.DeepEqual(n.Keep, want) || n.KeepMax != 4<<30 {
			t.Fatalf("%s: keep %q max %d, want %q and 4 GiB", n.Name, n.Keep, n.KeepMax, want)
		}
	}
	o = parseArgs(t, "--wdir /w --keep out ./app")
	spec, _, err = o.jobSpec("/w/app", m)
	if err != nil || spec.Nodes[0].Keep[0] != "/w/out" || spec.Nodes[0].KeepMax != 0 {
		t.Fatalf("--keep with --wdir: %+v, %v", spec.Nodes, err)
	}
	for _, bad := range []string{"--keep-max 0 ./app", "--keep-max 1X ./app", "--keep-max -5 ./app", "--keep-max 99999999999T ./app"} {
		if _, err := Parse(strings.Fields(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestKeepDefaults: the configuration's keep paths join the job's own;
// its keep_max applies unless the job gave --keep-max.
func TestKeepDefaults(t *testing.T) {
	o := parseArgs(t, "--keep out ./app")
	if err := o.KeepDefaults([]string{"restart", "out"}, "2G"); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.Keep, []string{"out", "restart"}) || o.KeepMax != 2<<30 {
		t.Fatalf("keep %q max %d", o.Keep, o.KeepMax)
	}
	o = parseArgs(t, "--keep-max 5M ./app")
	if err := o.KeepDefaults(nil, "2G"); err != nil || o.KeepMax != 5<<20 {
		t.Fatalf("--keep-max given: %d, %v", o.KeepMax, err)
	}
	for _, bad := range []struct {
		paths []string
		max   string
	}{{[]string{""}, ""}, {nil, "x"}, {nil, "0"}} {
		o = parseArgs(t, "./app")
		if err := o.KeepDefaults(bad.paths, bad.max); err == nil {
			t.Errorf("KeepDefaults(%q, %q): no error", bad.paths, bad.max)
		}
	}
}

// A program built with the Open MPI 5 prefix's mpicc: pmixd runs under the
// program's loader and libraries, and it and the ranks find libpmix's and
// hwloc's plugins in the prefix.
func TestJobSpecOMPI5(t *testing.T) {
	bin := workloads(t)
	prog := filepath.Join(bin, "ring.ompi5")
	if _, err := os.Stat(prog); err != nil {
		t.Skipf("%s not built (`make deps` installs Open MPI 5): %v", prog, err)
	}
	rt, err := DetectRuntime(prog, SystemLoader())
	if err != nil || !rt.Private() {
		t.Fatalf("DetectRuntime = %+v, %v", rt, err)
	}
	o := parseArgs(t, "-n 2 --host h1:1,h2:1 ./ring.ompi5")
	spec, _, err := o.jobSpec(prog, testMachine(8))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range spec.Nodes {
		js := pmixdSpec(t, n)
		if js.Loader != rt.Loader || !reflect.DeepEqual(js.LibraryPath, rt.LibraryPath) {
			t.Errorf("job-node %s: loader %q %q, want %q %q", n.Name, js.Loader, js.LibraryPath, rt.Loader, rt.LibraryPath)
		}
		for _, kv := range rt.Env {
			if !slices.Contains(js.ExtraEnv, kv) || !slices.Contains(n.Env, kv) {
				t.Errorf("job-node %s: %s missing from the ranks' (%q) or pmixd's (%q) environment", n.Name, kv, js.ExtraEnv, n.Env)
			}
		}
	}
}

// TestCompressFlag: --compress reaches the job spec, MPI or plain; an
// unknown codec is a usage error.
func TestCompressFlag(t *testing.T) {
	m := testMachine(2)
	for _, args := range []string{"--plain --host h1,h2 --compress zstd ./app", "--compress zstd ./app"} {
		o := parseArgs(t, args)
		spec, _, err := o.jobSpec("/bin/app", m)
		if err != nil || spec.Compress != "zstd" {
			t.Fatalf("%q: compress %q, %v", args, spec.Compress, err)
		}
	}
	if _, err := Parse(strings.Fields("--compress gzip ./app")); err == nil {
		t.Error("--compress gzip: no error")
	}
}
