package cgroup

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name, in, want string
		err            error
	}{
		{"hybrid", "30 22 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", nil},
		{"unified", "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup", nil},
		{"escaped", `25 1 0:22 / /mnt/cg\040two rw - cgroup2 none rw` + "\n", "/mnt/cg two", nil},
		{"v1 only", "31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "", ErrNoCgroup2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tt.in))
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestNewNormalizesPath(t *testing.T) {
	for in, want := range map[string]string{"torpor/j/n": "/torpor/j/n", "/torpor/j/n/": "/torpor/j/n", "/a/../b": "/b"} {
		if g := New("/m", in); g.Rel() != want || g.Path() != "/m"+want {
			t.Errorf("New(%q) = %s %s", in, g.Rel(), g.Path())
		}
	}
}
