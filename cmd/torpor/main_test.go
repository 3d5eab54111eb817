package main

import (
	"reflect"
	"testing"
)

func TestParseFlagsInterspersed(t *testing.T) {
	tests := []struct {
		args     []string
		node, to string
		pos      []string
		wantErr  bool
	}{
		{[]string{"job", "--node", "n1", "--to", "h4"}, "n1", "h4", []string{"job"}, false},
		{[]string{"--node=n1", "job", "--to", "h4"}, "n1", "h4", []string{"job"}, false},
		{[]string{"--to", "h4", "--", "--node"}, "", "h4", []string{"--node"}, false},
		{[]string{"job", "extra"}, "", "", []string{"job", "extra"}, false},
		{[]string{"job", "--bogus"}, "", "", nil, true},
	}
	for _, tt := range tests {
		fs := newFlagSet("migrate", "JOB")
		fs.SetOutput(discard{})
		node := fs.String("node", "", "")
		to := fs.String("to", "", "")
		err := parseFlags(fs, tt.args)
		if (err != nil) != tt.wantErr {
			t.Fatalf("%v: err %v", tt.args, err)
		}
		if err != nil {
			continue
		}
		got := fs.Args()
		if len(got) == 0 {
			got = nil
		}
		if *node != tt.node || *to != tt.to || !reflect.DeepEqual(got, tt.pos) {
			t.Errorf("%v: node=%q to=%q args=%q", tt.args, *node, *to, got)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
