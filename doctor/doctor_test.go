package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/criu"
)

func fakeCRIU(t *testing.T, version string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "criu")
	script := "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Version: " + version + "'; exit 0; fi\necho 'Looks good.'\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckCRIUVersion(t *testing.T) {
	tests := []struct {
		name, version, kernel string
		want                  Status
		wantIn                []string
	}{
		{"4.2 on 6.18", "4.2.1", "6.18.44", OK, []string{"4.2.1", "--criu flag"}},
		{"4.1 on 6.18", "4.1.1", "6.18.44", Fail, []string{"criu 4.1.1", "need >= 4.2.0", "make deps"}},
		{"3.17 on 6.18", "3.17.1", "6.18.44", Fail, []string{"criu 3.17.1", "make deps"}},
		{"4.1 on 6.15", "4.1.1", "6.15.0", OK, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := &Env{KernelRelease: tt.kernel, CRIU: criu.Locator{Flag: fakeCRIU(t, tt.version)}}
			res := checkCRIU(context.Background(), env)
			if res.Status != tt.want {
				t.Fatalf("status = %s (%s), want %s", res.Status, res.Detail, tt.want)
			}
			text := res.Detail + " " + res.Remedy
			for _, s := range tt.wantIn {
				if !strings.Contains(text, s) {
					t.Errorf("result %q lacks %q", text, s)
				}
			}
			if res.Status == OK && env.criuPath == "" {
				t.Error("a usable CRIU was not remembered for the criu check")
			}
		})
	}
}

func TestCRIUCheckOutput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "criu")
	script := "#!/bin/sh\necho 'Warn  (criu/kerndat.c:1799): Hardware breakpoints don'\\''t seem to work'\necho 'Error (criu/vdso.c:42): vdso: Unexpected rt vDSO area bounds'\nexit 1\n"
	if err := os.WriteFile(bad, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	env := &Env{criuPath: bad}
	res := checkCRIUFeatures(context.Background(), env)
	if res.Status != Fail || !strings.Contains(res.Detail, "Unexpected rt vDSO area bounds") {
		t.Fatalf("criu check result = %+v, want fail naming the Error line", res)
	}
	if res := checkBreakpoints(context.Background(), env); res.Status != Warn {
		t.Fatalf("breakpoints = %+v, want warn", res)
	}
}

func TestReport(t *testing.T) {
	checks := []Check{
		{Name: "a", Required: true, Run: func(context.Context, *Env) Result { return ok("fine") }},
		{Name: "b", Required: false, Run: func(context.Context, *Env) Result { return fail("do x", "broken") }},
	}
	rep := Run(context.Background(), &Env{}, checks)
	if rep.Failed() {
		t.Fatal("an optional failure failed the report")
	}
	if rep.Results[1].Status != Warn {
		t.Fatalf("optional failure reported as %s, want warn", rep.Results[1].Status)
	}
	checks[1].Required = true
	rep = Run(context.Background(), &Env{}, checks)
	if !rep.Failed() {
		t.Fatal("a required failure did not fail the report")
	}
	var buf bytes.Buffer
	if err := rep.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"ok", "fail", "broken", "→ do x", "1 ok, 0 warn, 1 fail"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("text report lacks %q:\n%s", s, buf.String())
		}
	}
	buf.Reset()
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || len(back.Results) != 2 || back.Results[1].Remedy != "do x" {
		t.Fatalf("JSON round trip: %v %+v", err, back)
	}
}

func TestCheckpointDirSpace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet", "there")
	res := checkCheckpointDir(context.Background(), &Env{CheckpointDir: dir})
	if res.Status == Fail || !strings.Contains(res.Detail, "GiB free") {
		t.Fatalf("checkpoint dir result = %+v", res)
	}
}

// The run directory: a tmpfs passes; any other file system (here /proc's)
// is a warning that names it and says what to do; a directory not made yet
// is judged by its nearest parent.
func TestCheckRunDir(t *testing.T) {
	testutil.RequireRoot(t, "mounts a tmpfs")
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	res := checkRunDir(context.Background(), &Env{RunDir: filepath.Join(dir, "torpor")})
	if res.Status != OK || !strings.Contains(res.Detail, "tmpfs") {
		t.Errorf("run dir under a tmpfs: %+v", res)
	}
	res = checkRunDir(context.Background(), &Env{RunDir: "/proc/sys/torpor"})
	if res.Status != Warn || !strings.Contains(res.Detail, "not a tmpfs") || !strings.Contains(res.Detail, "0x9fa0") || !strings.Contains(res.Remedy, "--run-dir") {
		t.Errorf("run dir under /proc: %+v", res)
	}
}

// The host checks touch the kernel for real; this project's machines and CI
// run as root, where they must pass.
func TestHostChecks(t *testing.T) {
	testutil.RequireRoot(t, "creates cgroups, network namespaces and BPF links")
	env := &Env{}
	if err := env.Probe(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Check{
		{Name: "kernel", Run: checkKernel},
		{Name: "cgroup", Run: checkCgroupFreeze},
		{Name: "netns", Run: checkNetnsVeth},
		{Name: "tcx", Run: checkTCX},
	} {
		if res := c.Run(context.Background(), env); res.Status != OK {
			t.Errorf("%s: %+v", c.Name, res)
		}
	}
	root, err := cgroup.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(root, "torpor-doctor-*"))
	if len(leftovers) > 0 {
		t.Errorf("cgroup probe left %v behind", leftovers)
	}
}

func TestCheckPrivateMPICH(t *testing.T) {
	prefix := func(t *testing.T, version string, mpicc bool) string {
		t.Helper()
		dir := t.TempDir()
		if version != "" {
			if err := os.WriteFile(filepath.Join(dir, "MPICH_VERSION"), []byte(version+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if mpicc {
			if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "bin", "mpicc"), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	tests := []struct {
		name, version string
		mpicc         bool
		want          Status
		wantIn        string
	}{
		{"4.2.1", "4.2.1", true, OK, "MPICH 4.2.1 in "},
		{"5.0.2", "5.0.2", true, OK, "MPICH 5.0.2 in "},
		{"4.0.2", "4.0.2", true, Warn, "older than 4.2.0"},
		{"no mpicc", "4.2.1", false, Warn, "mpicc"},
		{"none", "", false, Warn, "no private MPICH"},
		{"garbage", "four", true, Warn, "not a version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := checkPrivateMPICH(context.Background(), &Env{MPICHPrefix: prefix(t, tt.version, tt.mpicc)})
			if res.Status != tt.want || !strings.Contains(res.Detail, tt.wantIn) {
				t.Fatalf("got %s %q, want %s with %q", res.Status, res.Detail, tt.want, tt.wantIn)
			}
			if res.Status != OK && !strings.Contains(res.Remedy, "make deps") {
				t.Errorf("remedy %q does not say what to do", res.Remedy)
			}
		})
	}
}
