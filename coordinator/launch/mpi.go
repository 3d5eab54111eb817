package launch

import (
	"debug/elf"
	"errors"
	"fmt"
	"path"
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
