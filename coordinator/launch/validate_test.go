package launch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fixture makes a directory with an executable app, a non-executable file, a
// sub-directory, a hostfile and a bad hostfile, and puts bin/ in PATH.
func fixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("app", "#!/bin/sh\n", 0o755)
	write("data.txt", "x", 0o644)
	write("bin/tool", "#!/bin/sh\n", 0o755)
	write("bin/noexec", "x", 0o644)
	write("w/sub/prog", "#!/bin/sh\n", 0o755)
	write("hosts", "# two nodes\nnode1 slots=2\nnode2 slots=2\n", 0o644)
	write("badhosts", "node1 slots=2\nnode2 slots=two\n", 0o644)
	write("unknownhosts", "node1 slots=2\n\nnode9 slots=2\n", 0o644)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Join(dir, "bin"))
	t.Chdir(dir)
	return dir
}

func known(names ...string) func(string) bool {
	return func(h string) bool {
		for _, n := range names {
			if n == h {
				return true
			}
		}
		return false
	}
}

func TestValidate(t *testing.T) {
	dir := fixture(t)
	cluster := known("node1", "node2")
	tests := []struct {
		name  string
		args  string
		known func(string) bool
		is    error  // nil: valid
		msg   string // substring of the error
	}{
		{name: "embedded default", args: "-n 4 ./app"},
		{name: "absolute program", args: "-n 2 " + dir + "/app"},
		{name: "program in PATH", args: "-n 2 tool"},
		{name: "program relative to wdir", args: "--wdir w sub/prog"},
		{name: "no n means one per CPU", args: "./app"},
		{name: "hostfile, all slots", args: "--hostfile hosts ./app", known: cluster},
		{name: "hostfile, nil callback accepts", args: "--hostfile unknownhosts -n 4 ./app"},
		{name: "host list known", args: "--host node1:2,node2 -n 3 ./app", known: cluster},
		{name: "host filters hostfile", args: "--hostfile hosts --host node2 -n 2 ./app", known: cluster},
		{name: "oversubscribe", args: "--host node1 -n 3 --oversubscribe ./app", known: cluster},
		{name: "interval ok", args: "--checkpoint-interval 1s ./app"},

		{name: "missing program", args: "-n 2 ./nope", is: ErrProgram, msg: "program ./nope (looked at " + dir + "/nope): no such file; check the path"},
		{name: "missing program in wdir", args: "--wdir w ./prog", is: ErrProgram, msg: "relative to --wdir w"},
		{name: "not executable", args: "./data.txt", is: ErrProgram, msg: "not executable; run chmod +x"},
		{name: "directory", args: "./adir", is: ErrProgram, msg: "is a directory"},
		{name: "not in PATH", args: "frobnicate", is: ErrProgram, msg: "frobnicate not found in PATH; give its path, e.g. ./frobnicate"},
		{name: "in PATH but not executable", args: "noexec", is: ErrProgram, msg: "not executable"},
		{name: "wdir missing", args: "--wdir nowhere " + dir + "/app", is: ErrUsage, msg: "--wdir nowhere: no such directory"},
		{name: "wdir is a file", args: "--wdir data.txt " + dir + "/app", is: ErrUsage, msg: "not a directory"},
		{name: "unknown host in hostfile", args: "--hostfile unknownhosts -n 2 ./app", known: cluster, is: ErrUnknownHost,
			msg: "host node9 (from hostfile unknownhosts) is not part of this torpor cluster"},
		{name: "unknown host in host list", args: "--host node3 ./app", known: cluster, is: ErrUnknownHost, msg: "torpor shim --join"},
		{name: "bad hostfile", args: "--hostfile badhosts ./app", is: ErrHostfile, msg: "badhosts:2: slots=two: not a number"},
		{name: "missing hostfile", args: "--hostfile nohosts ./app", is: os.ErrNotExist, msg: "check the --hostfile path"},
		{name: "host not in hostfile", args: "--hostfile hosts --host node3 ./app", is: ErrUnknownHost, msg: "not in hostfile hosts"},
		{name: "more ranks than slots", args: "--hostfile hosts -n 5 ./app", known: cluster, is: ErrNotEnoughSlots,
			msg: "only 4 slots (node1:2, node2:2): not enough slots; add hosts or slots, lower -n, or pass --oversubscribe"},
		{name: "interval too short", args: "--checkpoint-interval 500ms ./app", is: ErrUsage, msg: "use at least 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := Parse(strings.Fields(tt.args))
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.args, err)
			}
			err = o.Validate(tt.known)
			if tt.is == nil {
				if err != nil {
					t.Fatalf("Validate(%q): %v", tt.args, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%q) = nil, want %v", tt.args, tt.is)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("Validate(%q) error %q does not match %v", tt.args, err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Validate(%q) error %q lacks %q", tt.args, err, tt.msg)
			}
		})
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	fixture(t)
	o := Options{Program: "./nope", Hosts: []HostSlots{{Host: "x", Slots: 1}}, NP: 2, CheckpointInterval: time.Millisecond}
	err := o.Validate(known())
	for _, is := range []error{ErrProgram, ErrUnknownHost, ErrNotEnoughSlots, ErrUsage} {
		if !errors.Is(err, is) {
			t.Errorf("Validate error %q lacks %v", err, is)
		}
	}
	if err := (Options{}).Validate(nil); !errors.Is(err, ErrNoProgram) {
		t.Errorf("Validate of empty options: %v, want ErrNoProgram", err)
	}
}

func TestResolve(t *testing.T) {
	dir := fixture(t)
	tests := []struct {
		args string
		want string
	}{
		{"./app", "localhost:[0 1 2]"},
		{"-n 2 ./app", "localhost:[0 1]"},
		{"--hostfile hosts ./app", "node1:[0 1] node2:[2 3]"},
		{"--hostfile hosts --map-by node -n 3 ./app", "node1:[0 2] node2:[1]"},
		{"--hostfile hosts --host node2 ./app", "node2:[0 1]"},
		{"--host a:1,b:1 -n 3 --oversubscribe ./app", "a:[0 1] b:[2]"},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			o, err := Parse(strings.Fields(tt.args))
			if err != nil {
				t.Fatal(err)
			}
			p, err := o.Resolve(3)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if p.String() != tt.want {
				t.Errorf("Resolve(3) of %q = %s, want %s", tt.args, p, tt.want)
			}
		})
	}
	o := Options{Program: "tool"}
	if got, err := o.ResolveProgram(); err != nil || got != filepath.Join(dir, "bin", "tool") {
		t.Errorf("ResolveProgram(tool) = %q, %v", got, err)
	}
	o = Options{Program: "sub/prog", Wdir: filepath.Join(dir, "w")}
	if got, err := o.ResolveProgram(); err != nil || got != filepath.Join(dir, "w", "sub", "prog") {
		t.Errorf("ResolveProgram(sub/prog) = %q, %v", got, err)
	}
}
