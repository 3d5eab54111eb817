package pmix

import (
	"slices"
	"strings"
	"testing"
)

func TestRankEnv(t *testing.T) {
	base := []string{"PATH=/bin", "PMIX_RANK=9", "PMIX_MCA_x=1", "OMPI_MCA_btl=tcp", "HOME=/root"}
	fork := []string{"PMIX_RANK=2", "PMIX_NAMESPACE=j"}
	extra := []string{"OMPI_MCA_btl=self,vader", "FOO=bar"}
	got := rankEnv(append(base, "PMI_FD=9"), append(fork, ompiDirectLaunch("j")...), extra)
	for _, want := range []string{"PATH=/bin", "PMIX_MCA_x=1", "PMIX_RANK=2", "PMIX_NAMESPACE=j",
		"OMPI_MCA_schizo=^orte", "OMPI_MCA_btl=self,vader", "FOO=bar", "HOME=/root"} {
		if !slices.Contains(got, want) {
			t.Errorf("env lacks %q: %v", want, got)
		}
	}
	if slices.Contains(got, "PMI_FD=9") {
		t.Errorf("inherited PMI_FD kept: %v", got)
	}
	seen := map[string]bool{}
	for _, kv := range got {
		k, _, _ := strings.Cut(kv, "=")
		if seen[k] {
			t.Errorf("%s set twice", k)
		}
		seen[k] = true
	}
	a, b := ompiDirectLaunch("j"), ompiDirectLaunch("k")
	if slices.Equal(a, b) {
		t.Errorf("precondition transports key does not depend on the job")
	}
	if !slices.Equal(a, ompiDirectLaunch("j")) {
		t.Errorf("precondition transports key differs between nodes of one job")
	}
}

func TestSpecValidate(t *testing.T) {
	good := JobSpec{Job: "j", Nodes: []Node{{Hostname: "h", Ranks: []int{0, 1}}}, Argv: []string{"/bin/true"}, TmpDir: "/tmp/x"}
	for _, tc := range []struct {
		name   string
		mutate func(*JobSpec)
		ok     bool
	}{
		{"valid", func(*JobSpec) {}, true},
		{"no argv", func(s *JobSpec) { s.Argv = nil }, false},
		{"relative tmpdir", func(s *JobSpec) { s.TmpDir = "x" }, false},
		{"negative rank", func(s *JobSpec) { s.Nodes[0].Ranks = []int{-1, 0} }, false},
		{"bad node index", func(s *JobSpec) { s.NodeIndex = 1 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			s.Nodes = []Node{{Hostname: "h", Ranks: slices.Clone(good.Nodes[0].Ranks)}}
			tc.mutate(&s)
			if err := validate(s); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestLocalUpstreamRefusesOtherNodes(t *testing.T) {
	data, err := LocalUpstream{}.Fence(t.Context(), FenceRequest{Node: 0, Nodes: []int{0}, Data: []byte("x")})
	if err != nil || string(data) != "x" {
		t.Fatalf("local fence = %q, %v", data, err)
	}
	if _, err := (LocalUpstream{}).Fence(t.Context(), FenceRequest{Node: 0, Nodes: []int{0, 1}}); err == nil {
		t.Fatal("local upstream accepted a two-node fence")
	}
}
