package launch

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DetectMPI tells which MPI a program was built against by reading its ELF
// dynamic section (DT_NEEDED): libmpi.so.40 (and Open MPI's libmpi_*,
// libopen-rte, libopen-pal) mean MPIOpenMPI; libmpich.so.12 (and libmpifort,
// libmpl) mean MPIMPICH. libmpi.so.12 is shipped by both MPICH and old Open
// MPI, so it is settled by Open MPI's ompi_* symbols. A statically linked
// program is recognised by its symbol table. A program that is not ELF (a
// script) or that links no MPI library gives an error wrapping ErrUnknownMPI;
// use MPIFlavour for the fallback to Open MPI.
func DetectMPI(program string) (string, error) {
	f, err := elf.Open(program)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return "", kindErrf(ErrUnknownMPI, "detect MPI of %s: not an ELF program (a script?)", program)
		}
		return "", fmt.Errorf("detect MPI of %s: %w", program, err)
	}
	defer f.Close()

	libs, err := f.ImportedLibraries()
	if err != nil {
		return "", kindErrf(ErrUnknownMPI, "detect MPI of %s: read DT_NEEDED: %v", program, err)
	}
	ompiSyms := hasOMPISymbol(f)
	var found []string
	ambiguous := false
	for _, lib := range libs {
		switch flavour := libFlavour(path.Base(lib)); flavour {
		case "":
		case "libmpi":
			ambiguous = true
		default:
			found = appendUnique(found, flavour)
		}
	}
	if ambiguous {
		if ompiSyms {
			found = appendUnique(found, MPIOpenMPI)
		} else {
			found = appendUnique(found, MPIMPICH)
		}
	}
	if len(found) == 0 {
		// Static link, or MPI pulled in through another library: symbols.
		if fl := staticFlavour(f); fl != "" {
			return fl, nil
		}
		if ompiSyms {
			return MPIOpenMPI, nil
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", kindErrf(ErrUnknownMPI, "detect MPI of %s: it links no MPI library directly (DT_NEEDED: %s)", program, strings.Join(libs, ", "))
	default:
		return "", kindErrf(ErrUnknownMPI, "detect MPI of %s: it links both Open MPI and MPICH (DT_NEEDED: %s)", program, strings.Join(libs, ", "))
	}
}

// libFlavour maps a DT_NEEDED entry to a flavour; "libmpi" means a libmpi
// whose soname both MPIs have used.
func libFlavour(lib string) string {
	switch {
	case strings.HasPrefix(lib, "libmpich"), strings.HasPrefix(lib, "libmpifort."),
		strings.HasPrefix(lib, "libmpl."), strings.HasPrefix(lib, "libmpicxx."):
		return MPIMPICH
	case strings.HasPrefix(lib, "libopen-rte."), strings.HasPrefix(lib, "libopen-pal."),
		strings.HasPrefix(lib, "libmpi_"), strings.HasPrefix(lib, "libompitrace."):
		return MPIOpenMPI
	case lib == "libmpi.so.12", lib == "libmpi.so":
		return "libmpi"
	case strings.HasPrefix(lib, "libmpi.so."):
		// Open MPI >= 2 (libmpi.so.20, .40); MPICH has used .12 since 3.1.
		return MPIOpenMPI
	}
	return ""
}

// hasOMPISymbol says whether the program's dynamic symbols name an ompi_*
// object (MPI_COMM_WORLD is &ompi_mpi_comm_world in Open MPI; MPICH's handles
// are integer constants). Such objects are often copy-relocated into the
// program's .bss, so defined dynamic symbols count too, not only imports.
func hasOMPISymbol(f *elf.File) bool {
	syms, err := f.DynamicSymbols()
	if err != nil {
		return false
	}
	for _, s := range syms {
		if strings.HasPrefix(s.Name, "ompi_") {
			return true
		}
	}
	return false
}

// staticFlavour looks for MPI implementation symbols defined in the program.
func staticFlavour(f *elf.File) string {
	syms, err := f.Symbols()
	if err != nil {
		return ""
	}
	for _, s := range syms {
		if s.Section == elf.SHN_UNDEF {
			continue
		}
		switch {
		case strings.HasPrefix(s.Name, "ompi_mpi_init"), s.Name == "ompi_mpi_comm_world":
			return MPIOpenMPI
		case strings.HasPrefix(s.Name, "MPIR_Init"), strings.HasPrefix(s.Name, "MPID_Init"):
			return MPIMPICH
		}
	}
	return ""
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// MPIFlavour returns the MPI of the job: --mpi if given, else DetectMPI on the
// resolved program path, else MPIOpenMPI. note is non-empty when the result
// is a guess; show it to the user.
func (o Options) MPIFlavour(programPath string) (flavour, note string) {
	if o.MPI != "" {
		return o.MPI, ""
	}
	fl, err := DetectMPI(programPath)
	if err == nil {
		return fl, ""
	}
	return MPIOpenMPI, fmt.Sprintf("%v; assuming Open MPI — pass --mpi mpich if the program uses MPICH", err)
}

// Runtime is how a program's ranks load their libraries, as far as pmixd
// must follow them: a PMIx server and its clients must be the same libpmix
// (libpmix.so.2 is the soname of PMIx 4.2 and 5.x alike).
type Runtime struct {
	// Loader is the program's dynamic loader (PT_INTERP) when pmixd must
	// run under it: empty when the program uses the system's.
	Loader string
	// LibraryPath is the program's DT_RPATH and DT_RUNPATH directories,
	// $ORIGIN expanded.
	LibraryPath []string
	// OpenMPI is the Open MPI release series of the libmpi.so.40 the program
	// resolves ("5" for libmpi that needs libopen-pal.so.80, "4" for one that
	// needs libopen-rte.so.40), or empty.
	OpenMPI string
	// LibMPI is the path of that libmpi, if one was found.
	LibMPI string
	// Env is for pmixd and the ranks when Private: where the libpmix and
	// libhwloc of LibraryPath find their plugins. Both look in directories
	// compiled in (Debian's /usr/lib/x86_64-linux-gnu/pmix2/lib/pmix and
	// .../hwloc), which on a system with its own PMIx and hwloc hold the
	// system's plugins, built for other versions of the libraries.
	Env []string
}

// Private says whether pmixd must run under the program's loader and
// library directories: the program has a loader of its own, or its library
// directories hold a libpmix (Open MPI 5 and PMIx 5 in a private prefix).
func (r Runtime) Private() bool { return r.Loader != "" }

// systemLibDirs are searched after a program's own directories.
var systemLibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// DetectRuntime reads program's PT_INTERP, DT_RPATH and DT_RUNPATH, and
// finds the libmpi it loads. systemLoader is the loader of a program built
// on this system (torpor's own; "" if torpor is static).
func DetectRuntime(program, systemLoader string) (Runtime, error) {
	var rt Runtime
	f, err := elf.Open(program)
	if err != nil {
		return rt, fmt.Errorf("read the runtime of %s: %w", program, err)
	}
	defer f.Close()
	interp := interpreter(f)
	origin := path.Dir(program)
	for _, tag := range []elf.DynTag{elf.DT_RPATH, elf.DT_RUNPATH} {
		vals, _ := f.DynString(tag)
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
				if d != "" && path.IsAbs(d) {
					rt.LibraryPath = appendUnique(rt.LibraryPath, path.Clean(d))
				}
			}
		}
	}
	ownPMIx := false
	for _, d := range rt.LibraryPath {
		if fileExists(path.Join(d, "libpmix.so.2")) {
			ownPMIx = true
		}
	}
	if interp != "" && !sameFile(interp, systemLoader) || ownPMIx {
		rt.Loader = interp
		if rt.Loader == "" {
			rt.Loader = systemLoader
		}
	}
	if rt.Private() {
		rt.Env = pluginEnv(rt.LibraryPath)
	}
	libs, _ := f.ImportedLibraries()
	for _, lib := range libs {
		if lib != "libmpi.so.40" {
			continue
		}
		for _, d := range append(append([]string(nil), rt.LibraryPath...), systemLibDirs...) {
			p := path.Join(d, lib)
			if !fileExists(p) {
				continue
			}
			rt.LibMPI = p
			rt.OpenMPI = openMPISeries(p)
			break
		}
	}
	return rt, nil
}

// pluginEnv points libpmix and libhwloc, the first of each in dirs, at the
// plugin directories beside them (<libdir>/pmix, <libdir>/hwloc, in upstream's
// and Debian's layouts alike); a directory that does not exist means no
// plugins, which is better than another version's.
func pluginEnv(dirs []string) []string {
	var env []string
	for _, l := range []struct{ lib, v string }{
		// PMIx 5.0 ignores PMIX_MCA_mca_base_component_path; it takes
		// its plugin directory from its install directories, which
		// PMIX_PKGLIBDIR overrides (measured with LD_DEBUG=files).
		{"libpmix.so.2", "PMIX_PKGLIBDIR"},
		{"libhwloc.so.15", "HWLOC_PLUGINS_PATH"},
	} {
		for _, d := range dirs {
			real, err := filepath.EvalSymlinks(path.Join(d, l.lib))
			if err != nil {
				continue
			}
			sub := "pmix"
			if l.lib == "libhwloc.so.15" {
				sub = "hwloc"
			}
			env = append(env, l.v+"="+filepath.Join(filepath.Dir(real), sub))
			break
		}
	}
	return env
}

// openMPISeries tells Open MPI 5 from 4 by what their libmpi.so.40 needs.
func openMPISeries(libmpi string) string {
	f, err := elf.Open(libmpi)
	if err != nil {
		return ""
	}
	defer f.Close()
	libs, _ := f.ImportedLibraries()
	for _, l := range libs {
		switch {
		case strings.HasPrefix(l, "libopen-pal.so.8"):
			return "5"
		case strings.HasPrefix(l, "libopen-rte.so.4"), strings.HasPrefix(l, "libopen-pal.so.4"):
			return "4"
		}
	}
	return ""
}

func interpreter(f *elf.File) string {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return ""
		}
		return strings.TrimRight(string(b), "\x00")
	}
	return ""
}

// SystemLoader is the dynamic loader of the running torpor binary (of
// programs built on this system), or x86-64's standard one if torpor is
// static.
func SystemLoader() string {
	if self, err := os.Executable(); err == nil {
		if f, err := elf.Open(self); err == nil {
			defer f.Close()
			if l := interpreter(f); l != "" {
				return l
			}
		}
	}
	return "/lib64/ld-linux-x86-64.so.2"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}
