package launch

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/pmix/jobspec"
)

// SandboxIfName is the network interface of a job-node's sandbox, the one
// the ranks of different job-nodes reach each other through. It must match
// the interface the shim gives every sandbox (shim/sandbox.IfName); it is
// spelled out here because this package must not depend on the shim.
const SandboxIfName = "eth0"

// machine is what JobSpec reads of the machine `torpor run` runs on.
type machine struct {
	uid       int
	lookupEnv func(string) (string, bool)
	environ   []string // the launcher's environment, passed on to the job
	path      string   // $PATH, for pmixd
	cpus      int
	suffix    string // makes a job id unique when no --job-name is given
	cwd       string // where relative --keep paths start without --wdir
}

// JobEnviron is the part of the launcher's environment a job inherits: all
// of it but what describes the launcher's own place in a batch system or an
// MPI job (SLURM_*, SLURMD_*, PMI_*, PMIX_* but PMIX_MCA_*, OMPI_* but
// OMPI_MCA_*). A job started from a Slurm batch script would otherwise take
// the batch step's Slurm variables for its own: Open MPI then starts every
// rank as a singleton, and after a restart on other nodes they would name the
// wrong nodes anyway. `-x NAME` still passes any of them.
func JobEnviron(env []string) []string {
	out := make([]string, 0, len(env))
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		switch {
		case strings.HasPrefix(name, "SLURM_"), strings.HasPrefix(name, "SLURMD_"), strings.HasPrefix(name, "PMI_"),
			strings.HasPrefix(name, "PMIX_") && !strings.HasPrefix(name, "PMIX_MCA_"),
			strings.HasPrefix(name, "OMPI_") && !strings.HasPrefix(name, "OMPI_MCA_"):
			continue
		}
		out = append(out, e)
	}
	return out
}

func thisMachine() machine {
	var b [3]byte
	_, _ = rand.Read(b[:])
	m := machine{
		uid: os.Getuid(), lookupEnv: os.LookupEnv, environ: JobEnviron(os.Environ()),
		path: os.Getenv("PATH"), cpus: runtime.NumCPU(), suffix: hex.EncodeToString(b[:]),
	}
	m.cwd, _ = os.Getwd()
	return m
}

// JobSpec turns the options into the spec of a job owned by the caller. prog
// is the resolved program (see ResolveProgram). With Plain the program runs
// as is, once per host (on LocalHost without hosts); otherwise the ranks are
// placed on job-nodes, one per host of the plan, each with a pmixd that
// launches its ranks.
//
// warnings are for the user (a -x variable that is not set, a guessed MPI
// flavour); they are returned also with an error, and come before it.
func (o Options) JobSpec(prog string) (spec coordinator.JobSpec, warnings []string, err error) {
	return o.jobSpec(prog, thisMachine())
}

func (o Options) jobSpec(prog string, m machine) (coordinator.JobSpec, []string, error) {
	spec, warnings, err := o.nodes(prog, m)
	if err != nil {
		return spec, warnings, err
	}
	// --keep paths are relative to the ranks' working directory.
	var keep []string
	for _, k := range o.Keep {
		if !filepath.IsAbs(k) {
			base := o.Wdir
			if base == "" {
				base = m.cwd
			}
			k = filepath.Join(base, k)
		}
		keep = append(keep, filepath.Clean(k))
	}
	for i := range spec.Nodes {
		spec.Nodes[i].Keep, spec.Nodes[i].KeepMax = keep, o.KeepMax
	}
	return spec, warnings, nil
}

func (o Options) nodes(prog string, m machine) (coordinator.JobSpec, []string, error) {
	// A name given with --name is the job's id, so scripts (Slurm requeue)
	// can find the job again; otherwise the program's name plus a random suffix.
	id := sanitize(o.Name(), agentapi.MaxNameLen-1-len(m.suffix)) + "-" + m.suffix
	if o.JobName != "" {
		id = o.JobName // Parse checked it is a valid name: used as given
	}
	spec := coordinator.JobSpec{ID: id, Owner: m.uid, Compress: o.Compress}
	env, missing := o.RankEnv(m.lookupEnv)
	var warnings []string
	for _, name := range missing {
		warnings = append(warnings, fmt.Sprintf("warning: -x %s: not set here, not exported", name))
	}
	if !o.Plain {
		spec, note, err := o.mpiSpec(spec, prog, env, m)
		if note != "" {
			warnings = append(warnings, note)
		}
		return spec, warnings, err
	}
	hosts := o.Hosts
	if len(hosts) == 0 {
		hosts = []HostSlots{{Host: LocalHost, Slots: 1}}
	}
	for i, h := range hosts {
		spec.Nodes = append(spec.Nodes, agentapi.NodeSpec{
			Name: "n" + strconv.Itoa(i), Host: h.Host,
			Argv: append([]string{prog}, o.Args...), Dir: o.Wdir,
			Env: append(append([]string(nil), m.environ...), env...),
		})
	}
	return spec, warnings, nil
}

// sanitize makes s (a program path) the start of a job id: its base name,
// with every character a job id cannot have replaced by '_', starting with a
// letter or digit, at most max characters.
func sanitize(s string, max int) string {
	s = filepath.Base(s)
	var out []rune
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			out = append(out, r)
		default:
			out = append(out, '_')
		}
	}
	if len(out) == 0 || out[0] == '.' || out[0] == '-' || out[0] == '_' {
		out = append([]rune("job"), out...)
	}
	if len(out) > max {
		out = out[:max]
	}
	return string(out)
}

// mpiSpec places the ranks on job-nodes (one per host of the plan) and gives
// each job-node a pmixd that launches its ranks. note is MPIFlavour's, for
// the user.
func (o Options) mpiSpec(spec coordinator.JobSpec, prog string, rankEnv []string, m machine) (_ coordinator.JobSpec, note string, _ error) {
	flavour, note := o.MPIFlavour(prog)
	plan, err := o.Resolve(m.cpus)
	if err != nil {
		return spec, note, err
	}
	wire := jobspec.WirePMIx
	extra := []string{
		// Job-nodes are separate hosts with their own addresses: TCP between
		// them, shared memory within.
		"OMPI_MCA_btl=self,vader,tcp", "OMPI_MCA_btl_tcp_if_include=" + SandboxIfName, "OMPI_MCA_oob_tcp_if_include=" + SandboxIfName,
	}
	if flavour == MPIMPICH {
		wire = jobspec.WirePMI1
		// TCP even between the ranks of one job-node. UCX 1.18's
		// shared-memory endpoints (sysv, posix, cma) read the peer's
		// /proc/PID/stat when they connect, to note its start time; the
		// sandbox has a PID namespace of its own but the host's /proc, where
		// the peer's PID names another process or none, and the connect
		// fails ("failed to get start time for pid 25"): with sysv, 8 of 20
		// 4-rank jobs died in MPI_Init. Shared memory needs a /proc of the
		// job-node's own (a mount namespace). TCP costs B1's ring (2 ranks,
		// 16-byte messages) 25-35 % against mpiexec.
		extra = []string{"UCX_TLS=tcp,self", "UCX_NET_DEVICES=" + SandboxIfName}
	}
	var rt Runtime
	if flavour != MPIMPICH {
		// A program torpor cannot read (a script, say) gets pmixd as it
		// is, as MPIFlavour falls back to Open MPI.
		rt, _ = DetectRuntime(prog, SystemLoader())
	}
	var nodes []jobspec.Node
	for i, pn := range plan.Nodes {
		nodes = append(nodes, jobspec.Node{Hostname: spec.ID + "-n" + strconv.Itoa(i), Ranks: pn.Ranks})
	}
	for i, pn := range plan.Nodes {
		nodeEnv := append(append([]string(nil), extra...), rt.Env...)
		if flavour != MPIMPICH && (pn.Oversubscribed || len(pn.Ranks) > m.cpus) {
			// More ranks than slots or cores: without this, Open MPI's busy
			// polling makes the ranks fight for the cores (mpirun sets it
			// itself when a node is oversubscribed; a direct launch must say
			// so). Not for --oversubscribe alone, which only allows it: a
			// rank that yields while it polls runs a latency-bound loop 7 %
			// slower (bench B1's ring, 2 ranks on 2 cores), and mpirun
			// does not set it then either.
			nodeEnv = append(nodeEnv, "OMPI_MCA_mpi_yield_when_idle=1")
		}
		js := jobspec.JobSpec{
			Job: spec.ID, Nodes: nodes, NodeIndex: i, Wire: wire,
			Argv: append([]string{prog}, o.Args...), Env: m.environ, ExtraEnv: append(nodeEnv, rankEnv...),
			Dir: o.Wdir, TagOutput: o.TagOutput,
		}
		if rt.Private() {
			js.Loader, js.LibraryPath = rt.Loader, rt.LibraryPath
		}
		env, err := jobspec.EnvString(js)
		if err != nil {
			return spec, note, err
		}
		spec.Nodes = append(spec.Nodes, agentapi.NodeSpec{
			Name: "n" + strconv.Itoa(i), Host: pn.Host, Hostname: nodes[i].Hostname,
			Argv: []string{"pmixd"}, Dir: o.Wdir,
			Env: append([]string{env, "PATH=" + m.path}, rt.Env...),
		})
	}
	return spec, note, nil
}
