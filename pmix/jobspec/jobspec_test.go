package jobspec

import (
	"errors"
	"strings"
	"testing"
)

func TestEnvRoundTrip(t *testing.T) {
	in := JobSpec{Job: "j", Nodes: []Node{{Hostname: "h0", Ranks: []int{0, 1}}}, Wire: WirePMI1, Argv: []string{"prog", "a b"}, TmpDir: "/t"}
	e, err := EnvString(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := FromEnv([]string{"PATH=/bin", e})
	if err != nil {
		t.Fatal(err)
	}
	if out == nil || out.Job != "j" || out.Wire != WirePMI1 || len(out.Argv) != 2 || out.Argv[1] != "a b" || out.Size() != 2 {
		t.Fatalf("round trip: %+v", out)
	}
	if js, err := FromEnv([]string{"PATH=/bin"}); js != nil || err != nil {
		t.Fatalf("no spec: %v, %v", js, err)
	}
	if _, err := FromEnv([]string{Env + "={"}); !errors.Is(err, ErrBadSpec) {
		t.Fatalf("bad JSON: %v, want ErrBadSpec", err)
	}
}

func TestPMIxdLoader(t *testing.T) {
	base := JobSpec{Argv: []string{"/bin/ring"}, TmpDir: "/run/t"}
	if got := strings.Join(base.PMIxdArgv("/bin/torpor", "--spec", "s"), " "); got != "/bin/torpor pmixd --spec s" {
		t.Errorf("without a loader: %q", got)
	}
	own := base
	own.Loader, own.LibraryPath = "/opt/o/ld.so", []string{"/opt/o/lib", "/opt/o/lib2"}
	if err := own.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(own.PMIxdArgv("/bin/torpor", "--spec", "s"), " "); got != "/opt/o/ld.so --library-path /opt/o/lib:/opt/o/lib2 /bin/torpor pmixd --spec s" {
		t.Errorf("with a loader: %q", got)
	}
	for name, bad := range map[string]JobSpec{
		"relative loader":  {Argv: base.Argv, TmpDir: base.TmpDir, Loader: "ld.so"},
		"relative dir":     {Argv: base.Argv, TmpDir: base.TmpDir, Loader: "/ld.so", LibraryPath: []string{"lib"}},
		"colon in dir":     {Argv: base.Argv, TmpDir: base.TmpDir, Loader: "/ld.so", LibraryPath: []string{"/a:/b"}},
		"loader for PMI-1": {Argv: base.Argv, TmpDir: base.TmpDir, Loader: "/ld.so", Wire: WirePMI1},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrBadSpec) {
			t.Errorf("%s: Validate = %v, want ErrBadSpec", name, err)
		}
	}
}
