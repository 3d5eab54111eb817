// Package prlimit holds prlimit.so, a library the shim preloads into CRIU on
// hosts whose root lacks CAP_SYS_RESOURCE (see csrc/prlimit.c), and says whether
// this host needs it.
package prlimit

//go:generate cc -shared -fPIC -O2 -Wall -o prlimit_amd64.so csrc/prlimit.c -ldl

import (
	_ "embed"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

//go:embed prlimit_amd64.so
var library []byte

// capSysResource is CAP_SYS_RESOURCE's bit.
const capSysResource = 24

// Needed says whether this process lacks CAP_SYS_RESOURCE in its effective
// set, so that CRIU, its child, cannot read another uid's resource limits.
func Needed() (bool, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false, fmt.Errorf("parse CapEff %q: %w", v, err)
			}
			return caps&(1<<capSysResource) == 0, nil
		}
	}
	return false, fmt.Errorf("no CapEff in /proc/self/status")
}

// Memfd returns the library in a sealed, read-only memfd, to preload from
// /proc/self/fd/N in a child that inherits it: nothing on disk to plant,
// replace or clean up.
func Memfd() (*os.File, error) {
	fd, err := unix.MemfdCreate("torpor-criu-prlimit.so", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd for the prlimit library: %w", err)
	}
	f := os.NewFile(uintptr(fd), "torpor-criu-prlimit.so")
	if _, err := f.Write(library); err != nil {
		f.Close()
		return nil, err
	}
	const seals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal the prlimit library: %w", err)
	}
	return f, nil
}
