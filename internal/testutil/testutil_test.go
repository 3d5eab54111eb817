package testutil

import (
	"fmt"
	"strings"
	"testing"
)

// stopTB records how a test was stopped, without stopping this one.
type stopTB struct {
	testing.TB
	fatal, skip string
}

func (s *stopTB) Helper()                      {}
func (s *stopTB) Fatalf(f string, args ...any) { s.fatal = fmt.Sprintf(f, args...) }
func (s *stopTB) Skipf(f string, args ...any)  { s.skip = fmt.Sprintf(f, args...) }

func TestRequireRoot(t *testing.T) {
	for _, tt := range []struct {
		name        string
		euid        int
		ci          bool
		fatal, skip bool
	}{
		{"root", 0, false, false, false},
		{"root in CI", 0, true, false, false},
		{"user", 1000, false, false, true},
		{"user in CI", 1000, true, true, false},
	} {
		s := &stopTB{TB: t}
		requireRoot(s, "mounts a tmpfs", tt.euid, tt.ci)
		if (s.fatal != "") != tt.fatal || (s.skip != "") != tt.skip {
			t.Errorf("%s: fatal %q, skip %q; want fatal %v, skip %v", tt.name, s.fatal, s.skip, tt.fatal, tt.skip)
		}
		if msg := s.fatal + s.skip; msg != "" && !strings.Contains(msg, "mounts a tmpfs") {
			t.Errorf("%s: %q does not say why", tt.name, msg)
		}
	}
}
