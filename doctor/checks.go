package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/criu"
	"github.com/torpor-hpc/torpor/shim/criu/prlimit"
)

// Env is what the checks look at. Fields left zero are filled by Probe.
type Env struct {
	KernelRelease string
	CRIU          criu.Locator
	CheckpointDir string
	// RunDir is the shim's run directory (its --run-dir); empty: not
	// checked.
	RunDir string
	// PMIxVersion reports the libpmix version torpor is linked with.
	PMIxVersion func() (string, error)
	// MPICHPrefix is torpor's private MPICH (scripts/deps.sh); empty:
	// $TORPOR_MPICH_PREFIX, else /opt/torpor/mpich.
	MPICHPrefix string
	// OMPI5Prefix is where `make deps` installs Open MPI 5 and PMIx 5;
	// empty means $TORPOR_OMPI5_PREFIX or DefaultOMPI5Prefix.
	OMPI5Prefix string

	criuPath    string
	criuCheck   string // output of `criu check`, cached for the breakpoint check
	criuChecked bool
}

// Probe fills in the kernel release.
func (e *Env) Probe() error {
	if e.KernelRelease != "" {
		return nil
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	e.KernelRelease = unix.ByteSliceToString(u.Release[:])
	return nil
}

// Checks returns every check, in the order they are printed.
func Checks() []Check {
	return []Check{
		{Name: "kernel", Required: true, Run: checkKernel},
		{Name: "root", Required: true, Run: checkRoot},
		{Name: "sys_resource", Required: false, Run: checkSysResource},
		{Name: "criu", Required: true, Run: checkCRIU},
		{Name: "criu check", Required: true, Run: checkCRIUFeatures},
		{Name: "hw breakpoints", Required: false, Run: checkBreakpoints},
		{Name: "criu kernel cache", Required: false, Run: checkKerndat},
		{Name: "cgroup v2 freeze", Required: true, Run: checkCgroupFreeze},
		{Name: "netns + veth", Required: true, Run: checkNetnsVeth},
		{Name: "bpf tcx", Required: true, Run: checkTCX},
		{Name: "libpmix", Required: true, Run: checkPMIx},
		{Name: "open mpi", Required: true, Run: checkOpenMPI},
		{Name: "mpich", Required: false, Run: checkMPICH},
		{Name: "mpich 4.2", Required: false, Run: checkPrivateMPICH},
		{Name: "open mpi 5", Required: false, Run: checkOMPI5},
		{Name: "checkpoint dir", Required: true, Run: checkCheckpointDir},
		{Name: "run dir", Required: false, Run: checkRunDir},
	}
}

// checkKerndat: where /run is not a tmpfs, CRIU keeps no kernel cache and
// probes the kernel at every run; a shim's driver mounts one (criu.WarmKerndat).
func checkKerndat(_ context.Context, _ *Env) Result {
	cached, detail, remedy, err := criu.KerndatState()
	if err != nil {
		return warn(remedy, "%v", err)
	}
	if !cached {
		return warn(remedy, "%s", detail)
	}
	return ok("%s", detail)
}

// existingParent is dir, or its nearest parent that exists.
func existingParent(dir string) string {
	for {
		if _, err := os.Stat(dir); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return dir
		}
		dir = parent
	}
}

// checkRunDir: an MPI job-node's shared-memory files (Open MPI's vader
// and shmem backing files) live in the run directory, so that they travel
// with its images. On a disk file system the kernel writes their dirty
// pages back to the disk while the ranks communicate through them.
func checkRunDir(_ context.Context, env *Env) Result {
	dir := env.RunDir
	if dir == "" {
		return ok("no run directory given: not checked")
	}
	probe := existingParent(dir)
	var st unix.Statfs_t
	if err := unix.Statfs(probe, &st); err != nil {
		return warn("create "+dir+" or give the shim another --run-dir", "statfs %s: %v", probe, err)
	}
	if int64(st.Type) != unix.TMPFS_MAGIC {
		return warn("give the shim a --run-dir on a tmpfs (`mount -t tmpfs -o mode=0755 tmpfs "+dir+"`, or a directory under a tmpfs /run)",
			"%s is on %s, not a tmpfs: MPI job-nodes' shared memory (<run-dir>/jobs/<job>/<node>.shm) is written back to that disk while ranks use it", dir, fsName(int64(st.Type)))
	}
	return ok("%s is on a tmpfs", dir)
}

// fsName names the common file systems by their statfs magic.
func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "an ext2/3/4 file system"
	case unix.XFS_SUPER_MAGIC:
		return "an XFS file system"
	case unix.BTRFS_SUPER_MAGIC:
		return "a Btrfs file system"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "an overlay file system"
	case unix.NFS_SUPER_MAGIC:
		return "an NFS file system"
	}
	return fmt.Sprintf("a file system of type 0x%x", magic)
}

func checkKernel(_ context.Context, env *Env) Result {
	maj, min := criu.KernelVersion(env.KernelRelease)
	// TCX (bpf_link on tc ingress/egress) arrived in 6.6.
	if maj < 6 || (maj == 6 && min < 6) {
		return fail("use a kernel >= 6.6 (TCX eBPF attach, cgroup.kill)", "%s is older than 6.6", env.KernelRelease)
	}
	return ok("%s (needs CRIU >= %s)", env.KernelRelease, criu.RequiredVersion(env.KernelRelease))
}

func checkRoot(context.Context, *Env) Result {
	if os.Geteuid() != 0 {
		return fail("run the shim (and doctor) as root: namespaces, cgroups, CRIU and eBPF need it", "running as uid %d", os.Geteuid())
	}
	return ok("running as root")
}

// checkSysResource: without CAP_SYS_RESOURCE CRIU cannot read a user's
// task's resource limits; the shim then preloads its prlimit library.
func checkSysResource(context.Context, *Env) Result {
	need, err := prlimit.Needed()
	if err != nil {
		return warn("check /proc/self/status", "%v", err)
	}
	if need {
		return warn("give root CAP_SYS_RESOURCE (it is missing from this session's bounding set) to run CRIU unmodified",
			"root lacks CAP_SYS_RESOURCE: to dump users' jobs the shim preloads torpor's prlimit library into CRIU (shim/criu/prlimit)")
	}
	return ok("root holds CAP_SYS_RESOURCE")
}

func checkCRIU(ctx context.Context, env *Env) Result {
	bin, err := env.CRIU.Find()
	if err != nil {
		return fail("run `make deps` (installs CRIU 4.2 into "+criu.DefaultPrefix+")", "%v", err)
	}
	v, err := criu.QueryVersion(ctx, bin.Path)
	if err != nil {
		return fail("check that "+bin.Path+" is a CRIU binary; run `make deps`", "%s (from %s): %v", bin.Path, bin.Source, err)
	}
	if err := criu.CheckVersion(v, env.KernelRelease); err != nil {
		return fail(fmt.Sprintf("run `make deps` (installs CRIU 4.2 into %s), or pass --criu / set $%s to a CRIU >= %s",
			criu.DefaultPrefix, criu.EnvCRIU, criu.RequiredVersion(env.KernelRelease)),
			"criu %s at %s (from %s) is too old for kernel %s: need >= %s",
			v, bin.Path, bin.Source, env.KernelRelease, criu.RequiredVersion(env.KernelRelease))
	}
	env.criuPath = bin.Path
	return ok("%s %s (from %s)", bin.Path, v, bin.Source)
}

func runCRIUCheck(ctx context.Context, env *Env) (string, error) {
	if env.criuChecked {
		return env.criuCheck, nil
	}
	if env.criuPath == "" {
		return "", errors.New("no usable CRIU (see the criu line)")
	}
	out, err := exec.CommandContext(ctx, env.criuPath, "check").CombinedOutput()
	env.criuCheck, env.criuChecked = string(out), true
	if err != nil {
		return string(out), fmt.Errorf("criu check: %w", err)
	}
	return string(out), nil
}

var criuErrorLine = regexp.MustCompile(`(?m)^Error .*$`)

func checkCRIUFeatures(ctx context.Context, env *Env) Result {
	if env.criuPath == "" {
		return fail("fix the criu line first", "no usable CRIU (see the criu line)")
	}
	out, err := runCRIUCheck(ctx, env)
	if err != nil {
		detail := err.Error()
		if m := criuErrorLine.FindAllString(out, -1); len(m) > 0 {
			detail = m[len(m)-1]
		}
		return fail("run `"+env.criuPath+" check` to see every failing feature; `make deps` installs a CRIU that works on this kernel", "%s", detail)
	}
	if !strings.Contains(out, "Looks good") {
		return fail("run `"+env.criuPath+" check`", "criu check did not say \"Looks good\": %s", firstLine(out))
	}
	return ok("Looks good.")
}

func checkBreakpoints(ctx context.Context, env *Env) Result {
	out, err := runCRIUCheck(ctx, env)
	if err != nil && out == "" {
		return warn("fix the criu check first", "unknown: %v", err)
	}
	if strings.Contains(out, "Hardware breakpoints don't seem to work") {
		return warn("harmless with CRIU >= 4.2, which detects it; CRIU 4.1 needs CRIU_FAULT=130 (common in VMs)",
			"hardware breakpoints do not work on this machine")
	}
	return ok("hardware breakpoints work")
}

func checkCgroupFreeze(context.Context, *Env) Result {
	root, err := cgroup.Mountpoint()
	if err != nil {
		return fail("mount the cgroup v2 hierarchy (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)", "%v", err)
	}
	dir := filepath.Join(root, fmt.Sprintf("torpor-doctor-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fail("run as root on a host with a writable cgroup v2 hierarchy", "create %s: %v", dir, err)
	}
	defer os.Remove(dir)
	var missing []string
	for _, f := range []string{"cgroup.freeze", "cgroup.kill", "cgroup.events"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fail("use a kernel >= 5.14 with cgroup v2", "cgroup v2 at %s lacks %s", root, strings.Join(missing, ", "))
	}
	return ok("cgroup v2 at %s with cgroup.freeze and cgroup.kill", root)
}

func addVeth() (netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name = "tpdoc0"
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "tpdoc1"}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth pair: %w", err)
	}
	l, err := netlink.LinkByName(la.Name)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set veth up: %w", err)
	}
	return l, nil
}

func checkNetnsVeth(context.Context, *Env) Result {
	err := nsrun.InNewNetNS(func() error { // the namespace and its veth go with the thread
		_, err := addVeth()
		return err
	})
	if err != nil {
		return fail("run as root on a kernel with CONFIG_NET_NS and CONFIG_VETH", "%v", err)
	}
	return ok("created a network namespace with a veth pair")
}

func checkTCX(context.Context, *Env) Result {
	err := nsrun.InNewNetNS(func() error { // the namespace and its veth go with the thread
		l, err := addVeth()
		if err != nil {
			return err
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:    ebpf.SchedCLS,
			License: "GPL",
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, -1), // TCX_NEXT: let the packet continue
				asm.Return(),
			},
		})
		if err != nil {
			return fmt.Errorf("load sched_cls program: %w", err)
		}
		defer prog.Close()
		tcx, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach tcx ingress: %w", err)
		}
		return tcx.Close()
	})
	if err != nil {
		return fail("use a kernel >= 6.6 with BPF, BPF JIT and TCX; torpor falls back to cgroup_skb where TCX is missing", "%v", err)
	}
	return ok("loaded a sched_cls program and attached it with TCX in a throw-away netns")
}

func checkPMIx(_ context.Context, env *Env) Result {
	if env.PMIxVersion == nil {
		return fail("build torpor with cgo (CGO_ENABLED=1) against libpmix-dev", "this torpor binary was built without libpmix")
	}
	v, err := env.PMIxVersion()
	if err != nil {
		return fail("apt-get install libpmix2 libpmix-dev (or `make deps`) and rebuild torpor with cgo", "%v", err)
	}
	return ok("%s", v)
}

func checkOpenMPI(ctx context.Context, _ *Env) Result {
	out, err := exec.CommandContext(ctx, "ompi_info", "--version").CombinedOutput()
	if err != nil {
		return fail("apt-get install openmpi-bin libopenmpi-dev (or `make deps`)", "ompi_info: %v", err)
	}
	return ok("%s", firstLine(string(out)))
}

// privatePrefix is where a private MPI of scripts/deps.sh is: set, else
// $envVar (the variable deps.sh reads too), else def.
func privatePrefix(set, envVar, def string) string {
	if set != "" {
		return set
	}
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	return def
}

// DefaultOMPI5Prefix is where scripts/deps.sh installs Debian trixie's Open
// MPI 5 and PMIx 5 (root/ holds the unpacked packages, bin/mpicc builds
// programs against them, VERSIONS names the two packages' versions).
const DefaultOMPI5Prefix = "/opt/torpor/ompi5"

// checkOMPI5 reports the private Open MPI 5 and the PMIx that a pmixd gets
// under its loader: this torpor binary is run as `pmixd --pmix-version` the
// way the shim runs a pmixd for a program built with the prefix's mpicc.
func checkOMPI5(ctx context.Context, env *Env) Result {
	prefix := privatePrefix(env.OMPI5Prefix, "TORPOR_OMPI5_PREFIX", DefaultOMPI5Prefix)
	remedy := "`make deps` installs Open MPI 5 and PMIx 5 in " + prefix + " (optional: for programs built with its bin/mpicc)"
	versions, err := os.ReadFile(filepath.Join(prefix, "VERSIONS"))
	if err != nil {
		return warn(remedy, "not installed: %v", err)
	}
	vers := map[string]string{}
	for _, line := range strings.Split(string(versions), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			vers[k] = v
		}
	}
	libdir := filepath.Join(prefix, "root/usr/lib/x86_64-linux-gnu")
	loader := filepath.Join(libdir, "ld-linux-x86-64.so.2")
	self, err := os.Executable()
	if err != nil {
		return warn(remedy, "find the torpor binary: %v", err)
	}
	out, err := exec.CommandContext(ctx, loader, "--library-path", libdir, self, "pmixd", "--pmix-version").CombinedOutput()
	if err != nil {
		return warn("run `make deps` again (remove "+prefix+" first), and build torpor with cgo",
			"Open MPI %s in %s, but pmixd does not start under its loader: %v: %s", vers["openmpi"], prefix, err, firstLine(string(out)))
	}
	return ok("Open MPI %s and PMIx %s in %s; pmixd under its loader: %s", vers["openmpi"], vers["pmix"], prefix, firstLine(string(out)))
}

func checkMPICH(ctx context.Context, _ *Env) Result {
	out, err := exec.CommandContext(ctx, "mpichversion").CombinedOutput()
	if err != nil {
		return warn("apt-get install mpich libmpich-dev (or `make deps`) to run MPICH programs", "mpichversion: %v", err)
	}
	return ok("%s", strings.Join(strings.Fields(firstLine(string(out))), " "))
}

// minPrivateMPICH is the first MPICH whose MPI_Finalize cannot deadlock
// over TCP (pmodels/mpich#6596).
var minPrivateMPICH = [3]int{4, 2, 0}

func checkPrivateMPICH(_ context.Context, env *Env) Result {
	prefix := privatePrefix(env.MPICHPrefix, "TORPOR_MPICH_PREFIX", "/opt/torpor/mpich")
	const fix = "`make deps` installs MPICH 4.2 privately; build MPICH programs with its mpicc (Debian 12's MPICH 4.0.2 can hang in MPI_Finalize)"
	data, err := os.ReadFile(filepath.Join(prefix, "MPICH_VERSION"))
	if err != nil {
		return warn(fix, "no private MPICH in %s: %v", prefix, err)
	}
	v := strings.TrimSpace(string(data))
	var got [3]int
	if n, _ := fmt.Sscanf(v, "%d.%d.%d", &got[0], &got[1], &got[2]); n < 2 {
		return warn(fix, "%s/MPICH_VERSION holds %q, not a version", prefix, v)
	}
	if slices.Compare(got[:], minPrivateMPICH[:]) < 0 {
		return warn(fix, "MPICH %s in %s is older than 4.2.0", v, prefix)
	}
	mpicc := filepath.Join(prefix, "bin", "mpicc")
	if err := unix.Access(mpicc, unix.X_OK); err != nil {
		return warn(fix, "%s: %v", mpicc, err)
	}
	return ok("MPICH %s in %s (compile with %s)", v, prefix, mpicc)
}

func checkCheckpointDir(_ context.Context, env *Env) Result {
	dir := env.CheckpointDir
	// The directory may not exist yet: measure the nearest existing parent.
	probe := existingParent(dir)
	var st unix.Statfs_t
	if err := unix.Statfs(probe, &st); err != nil {
		return fail("create "+dir+" or set checkpoint_dir in the config", "statfs %s: %v", probe, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	const gib = 1 << 30
	switch {
	case free < gib/4:
		return fail("free space under "+dir+" or point --checkpoint-dir elsewhere: images are about as large as the job's memory",
			"%s: %.2f GiB free", dir, float64(free)/gib)
	case free < 4*gib:
		return warn("checkpoints need about as much space as the job's memory", "%s: %.1f GiB free", dir, float64(free)/gib)
	}
	return ok("%s: %.1f GiB free", dir, float64(free)/gib)
}
