package jobspec

import (
	"errors"
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
