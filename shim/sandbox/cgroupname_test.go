package sandbox

import "testing"

// A sandbox's empty parent cgroups are removed up to the first directory of
// the shim's cgroup parent, whatever that parent is.
func TestCgroupTop(t *testing.T) {
	for parent, want := range map[string]string{
		"":                   "/torpor",
		"/torpor":            "/torpor",
		"/torpor/e123":       "/torpor",
		"torpor-solo7":       "/torpor-solo7",
		"/site/torpor/jobs/": "/site",
	} {
		if got := cgroupTop(parent); got != want {
			t.Errorf("cgroupTop(%q) = %q, want %q", parent, got, want)
		}
	}
}
