package launch

import (
	"reflect"
	"strings"
	"testing"
)

func TestRankEnv(t *testing.T) {
	o, err := Parse(strings.Fields("-x HOME -x UNSET -x A=1 -x OMPI_MCA_btl=self --mca btl tcp,self --mca crs criu ./app"))
	if err != nil {
		t.Fatal(err)
	}
	caller := map[string]string{"HOME": "/root"}
	env, missing := o.RankEnv(func(k string) (string, bool) { v, ok := caller[k]; return v, ok })
	wantEnv := []string{"HOME=/root", "A=1", "OMPI_MCA_btl=self", "OMPI_MCA_btl=tcp,self"}
	if !reflect.DeepEqual(env, wantEnv) {
		t.Errorf("RankEnv env = %q, want %q", env, wantEnv)
	}
	if !reflect.DeepEqual(missing, []string{"UNSET"}) {
		t.Errorf("RankEnv missing = %q", missing)
	}
	if !o.Checkpointing {
		t.Error("--mca crs criu did not turn checkpointing on")
	}
}

func TestNameAndTag(t *testing.T) {
	if n := (Options{Program: "/opt/bin/ring.mpich"}).Name(); n != "ring.mpich" {
		t.Errorf("Name() = %q", n)
	}
	if n := (Options{Program: "./a", JobName: "j1"}).Name(); n != "j1" {
		t.Errorf("Name() = %q", n)
	}
	if p := TagPrefix(1, 0, StreamStdout); p != "[1,0]<stdout>:" {
		t.Errorf("TagPrefix = %q", p)
	}
	if p := TagPrefix(1, 12, StreamStderr); p != "[1,12]<stderr>:" {
		t.Errorf("TagPrefix = %q", p)
	}
}
