package launch

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// workloads returns bench/workloads/bin, building it with make if a binary is
// missing. It skips only when an MPI compiler wrapper is not installed.
func workloads(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../bench/workloads")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	missing := false
	for _, f := range []string{"ring.openmpi", "ring.mpich"} {
		if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
			missing = true
		}
	}
	if !missing {
		return bin
	}
	for _, cc := range []string{"mpicc.openmpi", "mpicc.mpich"} {
		if _, err := exec.LookPath(cc); err != nil {
			t.Skipf("%s not installed (run `make deps`): cannot build the MPI workloads", cc)
		}
	}
	out, err := exec.Command("make", "-C", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("make -C %s: %v\n%s", dir, err, out)
	}
	return bin
}

func TestDetectMPIRealBinaries(t *testing.T) {
	bin := workloads(t)
	for file, want := range map[string]string{
		"ring.openmpi":    MPIOpenMPI,
		"ring.mpich":      MPIMPICH,
		"stencil.openmpi": MPIOpenMPI,
		"stencil.mpich":   MPIMPICH,
	} {
		t.Run(file, func(t *testing.T) {
			p := filepath.Join(bin, file)
			if _, err := os.Stat(p); err != nil {
				t.Skipf("%s not built: %v", p, err)
			}
			got, err := DetectMPI(p)
			if err != nil || got != want {
				t.Fatalf("DetectMPI(%s) = %q, %v; want %q", file, got, err, want)
			}
			fl, note := Options{}.MPIFlavour(p)
			if fl != want || note != "" {
				t.Errorf("MPIFlavour(%s) = %q, %q", file, fl, note)
			}
		})
	}
}

func TestDetectMPIFallbacks(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "job.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec ./app\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable() // this test binary: ELF, no MPI
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		unknown    bool
		msg        string
	}{
		{"script", script, true, "not an ELF program"},
		{"elf without MPI", self, true, "links no MPI library"},
		{"missing file", filepath.Join(dir, "nope"), false, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fl, err := DetectMPI(tt.path)
			if err == nil {
				t.Fatalf("DetectMPI(%s) = %q, want error", tt.path, fl)
			}
			if errors.Is(err, ErrUnknownMPI) != tt.unknown || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("DetectMPI(%s) error %q (unknown=%v), want %q unknown=%v", tt.path, err, errors.Is(err, ErrUnknownMPI), tt.msg, tt.unknown)
			}
			fl, note := Options{}.MPIFlavour(tt.path)
			if fl != MPIOpenMPI || !strings.Contains(note, "assuming Open MPI") || !strings.Contains(note, "--mpi mpich") {
				t.Errorf("MPIFlavour fallback = %q, %q", fl, note)
			}
		})
	}
	if fl, note := (Options{MPI: MPIMPICH}).MPIFlavour(script); fl != MPIMPICH || note != "" {
		t.Errorf("--mpi mpich not honoured: %q %q", fl, note)
	}
}

func TestLibFlavour(t *testing.T) {
	for lib, want := range map[string]string{
		"libmpi.so.40": MPIOpenMPI, "libmpi.so.20": MPIOpenMPI, "libmpi_mpifh.so.40": MPIOpenMPI,
		"libopen-pal.so.40": MPIOpenMPI, "libmpich.so.12": MPIMPICH, "libmpifort.so.12": MPIMPICH,
		"libmpi.so.12": "libmpi", "libc.so.6": "", "libmpix.so.1": "",
	} {
		if got := libFlavour(lib); got != want {
			t.Errorf("libFlavour(%s) = %q, want %q", lib, got, want)
		}
	}
}

// TestDetectMPIPatched rewrites the DT_NEEDED entries of the real workloads
// with patchelf to cover the ambiguous soname libmpi.so.12 (MPICH >= 3.1 and
// Open MPI 1.x both used it) and MPI reached through another library.
func TestDetectMPIPatched(t *testing.T) {
	bin := workloads(t)
	if _, err := exec.LookPath("patchelf"); err != nil {
		t.Skip("patchelf not installed (run `make deps`)")
	}
	tests := []struct {
		name, src string
		patch     []string
		want      string
	}{
		{"mpich as libmpi.so.12", "ring.mpich", []string{"--replace-needed", "libmpich.so.12", "libmpi.so.12"}, MPIMPICH},
		{"openmpi as libmpi.so.12", "ring.openmpi", []string{"--replace-needed", "libmpi.so.40", "libmpi.so.12"}, MPIOpenMPI},
		{"openmpi through another library", "ring.openmpi", []string{"--replace-needed", "libmpi.so.40", "libwrapper.so.1"}, MPIOpenMPI},
		{"both MPIs", "ring.openmpi", []string{"--add-needed", "libmpich.so.12"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(bin, tt.src))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), tt.src)
			if err := os.WriteFile(p, data, 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("patchelf", append(tt.patch, p)...).CombinedOutput(); err != nil {
				t.Fatalf("patchelf %v: %v\n%s", tt.patch, err, out)
			}
			got, err := DetectMPI(p)
			if tt.want == "" {
				if err == nil || !errors.Is(err, ErrUnknownMPI) || !strings.Contains(err.Error(), "both Open MPI and MPICH") {
					t.Fatalf("DetectMPI = %q, %v; want a both-MPIs error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("DetectMPI = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestDetectRuntime: pmixd follows a program's own loader, or its own
// libpmix, and nothing else; the Open MPI series is read from the libmpi the
// program resolves.
func TestDetectRuntime(t *testing.T) {
	bin := workloads(t)
	if _, err := exec.LookPath("patchelf"); err != nil {
		t.Skip("patchelf not installed (run `make deps`)")
	}
	sys := SystemLoader()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "lib", "libpmix.so.2"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		patch  []string
		loader string
		path   []string
		series string
		env    []string
	}{
		{"system Open MPI 4.1", nil, "", nil, "4", nil},
		{"a loader of its own", []string{"--set-interpreter", "/opt/x/ld-linux-x86-64.so.2", "--set-rpath", "/opt/x/lib"}, "/opt/x/ld-linux-x86-64.so.2", []string{"/opt/x/lib"}, "4", nil},
		{"a libpmix of its own", []string{"--set-rpath", "$ORIGIN/lib:/nonexistent"}, sys, []string{filepath.Join(dir, "lib"), "/nonexistent"}, "4",
			[]string{"PMIX_PKGLIBDIR=" + filepath.Join(dir, "lib", "pmix")}},
		{"a runpath without libpmix", []string{"--set-rpath", "/nonexistent"}, "", []string{"/nonexistent"}, "4", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(bin, "ring.openmpi"))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "ring")
			if err := os.WriteFile(p, data, 0o755); err != nil {
				t.Fatal(err)
			}
			if tt.patch != nil {
				if out, err := exec.Command("patchelf", append(tt.patch, p)...).CombinedOutput(); err != nil {
					t.Fatalf("patchelf %v: %v\n%s", tt.patch, err, out)
				}
			}
			rt, err := DetectRuntime(p, sys)
			if err != nil {
				t.Fatal(err)
			}
			if rt.Loader != tt.loader || strings.Join(rt.LibraryPath, ":") != strings.Join(tt.path, ":") || rt.OpenMPI != tt.series ||
				strings.Join(rt.Env, " ") != strings.Join(tt.env, " ") {
				t.Fatalf("DetectRuntime = %+v; want loader %q, library path %q, Open MPI %q, env %q", rt, tt.loader, tt.path, tt.series, tt.env)
			}
		})
	}
	t.Run("Open MPI 5 of make deps", func(t *testing.T) {
		p := filepath.Join(bin, "ring.ompi5")
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s not built (`make deps` installs Open MPI 5): %v", p, err)
		}
		rt, err := DetectRuntime(p, sys)
		if err != nil {
			t.Fatal(err)
		}
		if !rt.Private() || !strings.HasSuffix(rt.Loader, "/ld-linux-x86-64.so.2") || rt.OpenMPI != "5" || len(rt.LibraryPath) == 0 || len(rt.Env) != 2 {
			t.Fatalf("DetectRuntime(ring.ompi5) = %+v; want its own loader and Open MPI 5", rt)
		}
		if fl, err := DetectMPI(p); err != nil || fl != MPIOpenMPI {
			t.Fatalf("DetectMPI(ring.ompi5) = %q, %v", fl, err)
		}
	})
}
