package main

import (
	"reflect"
	"strings"
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

func TestParseNodeNetAndPeers(t *testing.T) {
	for in, want := range map[string]string{"": "invalid Prefix", "10.99.0.7/16": "10.99.0.0/16", "198.19.0.0/16": "198.19.0.0/16"} {
		p, err := parseNodeNet(in)
		if err != nil || p.String() != want {
			t.Errorf("parseNodeNet(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, bad := range []string{"10.99.0.0", "fd00::/64", "10.0.0.0/4", "10.0.0.0/31", "ten/8"} {
		if _, err := parseNodeNet(bad); err == nil || !strings.Contains(err.Error(), "--node-net") {
			t.Errorf("parseNodeNet(%q): %v; want an error naming --node-net", bad, err)
		}
	}
	ips, err := parseIPs([]string{"10.250.1.2", " 10.250.2.2", ""})
	if err != nil || len(ips) != 2 || ips[1].String() != "10.250.2.2" {
		t.Errorf("parseIPs = %v, %v", ips, err)
	}
	for _, bad := range []string{"h1", "fd00::1", "10.250.1.2/24"} {
		if _, err := parseIPs([]string{bad}); err == nil {
			t.Errorf("parseIPs(%q) accepted it", bad)
		}
	}
}
