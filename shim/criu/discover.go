// Package criu wraps CRIU for torpor: finding a usable binary, checking its version
// and features, and driving dump and restore through go-criu.
package criu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPrefix is where `make deps` (scripts/deps.sh) installs the private CRIU.
const DefaultPrefix = "/opt/torpor/criu"

// EnvCRIU names the environment variable that overrides the CRIU binary.
const EnvCRIU = "TORPOR_CRIU"

var (
	// ErrNotFound means no CRIU binary was found anywhere torpor looks.
	ErrNotFound = errors.New("criu not found")
	// ErrTooOld means the CRIU binary is older than this kernel needs.
	ErrTooOld = errors.New("criu too old")
)

// Source says where a CRIU binary was found.
type Source string

const (
	SourceFlag   Source = "--criu flag"
	SourceEnv    Source = EnvCRIU
	SourceConfig Source = "config"
	SourcePrefix Source = "private prefix " + DefaultPrefix
	SourcePath   Source = "PATH"
)

// Binary is a located CRIU executable.
type Binary struct {
	Path   string
	Source Source
}

// Locator holds the places to look for CRIU, in the order torpor uses them:
// the --criu flag, $TORPOR_CRIU, the configuration file, the private prefix,
// then $PATH. The first non-empty explicit setting wins and must exist: a
// user who names a binary never silently gets another one.
type Locator struct {
	Flag   string              // value of --criu, if given
	Config string              // `criu:` from the configuration file, if set
	Prefix string              // private prefix; DefaultPrefix when empty
	Getenv func(string) string // os.Getenv when nil
	// LookPath searches $PATH; exec.LookPath when nil.
	LookPath func(string) (string, error)
}

// Find returns the CRIU binary to use.
func (l Locator) Find() (Binary, error) {
	getenv := l.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	lookPath := l.LookPath
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	explicit := []struct {
		path string
		src  Source
	}{
		{l.Flag, SourceFlag},
		{getenv(EnvCRIU), SourceEnv},
		{l.Config, SourceConfig},
	}
	for _, e := range explicit {
		if e.path == "" {
			continue
		}
		if err := isExecutable(e.path); err != nil {
			return Binary{}, fmt.Errorf("criu from %s: %w", e.src, err)
		}
		return Binary{Path: e.path, Source: e.src}, nil
	}
	prefix := l.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if p := filepath.Join(prefix, "bin", "criu"); isExecutable(p) == nil {
		src := SourcePrefix
		if prefix != DefaultPrefix {
			src = Source("private prefix " + prefix)
		}
		return Binary{Path: p, Source: src}, nil
	}
	if p, err := lookPath("criu"); err == nil {
		return Binary{Path: p, Source: SourcePath}, nil
	}
	return Binary{}, fmt.Errorf("%w: not in --criu, $%s, config, %s or $PATH — run `make deps` to install CRIU >= 4.2 into %s",
		ErrNotFound, EnvCRIU, prefix, DefaultPrefix)
}

func isExecutable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// Version is a CRIU version as CRIU's RPC reports it: major*10000 + minor*100 + sublevel.
type Version int

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

// ParseVersion reads the output of `criu --version` ("Version: 4.2.1", optionally
// followed by a GitID line).
func ParseVersion(out string) (Version, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		rest, ok := strings.CutPrefix(line, "Version:")
		if !ok {
			continue
		}
		parts := strings.Split(strings.TrimSpace(rest), ".")
		if len(parts) < 2 || len(parts) > 3 {
			return 0, fmt.Errorf("parse criu version %q: want MAJOR.MINOR[.SUB]", strings.TrimSpace(rest))
		}
		var n [3]int
		for i, p := range parts {
			// Tolerate suffixes such as "4.2-rc1" on the last component.
			digits := p
			if j := strings.IndexFunc(p, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
				digits = p[:j]
			}
			v, err := strconv.Atoi(digits)
			if err != nil || v > 99 || (i == 0 && v > 999) {
				return 0, fmt.Errorf("parse criu version %q: bad component %q", strings.TrimSpace(rest), p)
			}
			n[i] = v
		}
		return Version(n[0]*10000 + n[1]*100 + n[2]), nil
	}
	return 0, fmt.Errorf("parse criu version: no \"Version:\" line in %q", out)
}

// QueryVersion runs `criu --version`.
func QueryVersion(ctx context.Context, path string) (Version, error) {
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("run %s --version: %w (output: %s)", path, err, strings.TrimSpace(string(out)))
	}
	return ParseVersion(string(out))
}

// RequiredVersion is the oldest CRIU that works on a kernel release such as
// "6.18.44-fc". Kernels >= 6.16 restrict SO_PASSCRED/SO_PASSSEC on INET
// sockets, which CRIU < 4.2 trips over when dumping any TCP socket; kernels
// >= 6.13 add a vDSO mapping that CRIU 3.x rejects.
func RequiredVersion(kernelRelease string) Version {
	maj, min := KernelVersion(kernelRelease)
	switch {
	case maj > 6 || (maj == 6 && min >= 16):
		return 40200
	case maj == 6 && min >= 13:
		return 40100
	default:
		return 31700
	}
}

// KernelVersion extracts major and minor from a kernel release string.
// Unparsable input yields 0, 0.
func KernelVersion(release string) (major, minor int) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0
	}
	major, err1 := strconv.Atoi(parts[0])
	mi := parts[1]
	if j := strings.IndexFunc(mi, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
		mi = mi[:j]
	}
	minor, err2 := strconv.Atoi(mi)
	if err1 != nil || err2 != nil {
		return 0, 0
	}
	return major, minor
}

// CheckVersion returns ErrTooOld, with a remedy, when v is older than the kernel needs.
func CheckVersion(v Version, kernelRelease string) error {
	need := RequiredVersion(kernelRelease)
	if v >= need {
		return nil
	}
	return fmt.Errorf("%w: criu %s found; torpor needs >= %s on kernel %s — run `make deps` (installs CRIU 4.2 into %s) or point --criu / $%s at a newer one",
		ErrTooOld, v, need, kernelRelease, DefaultPrefix, EnvCRIU)
}
