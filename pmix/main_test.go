package pmix

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMainUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"Job": "j", "Argv": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.json")
	if err := os.WriteFile(garbage, []byte(`{"Job": `), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no spec", nil, 2, "usage: torpor pmixd --spec FILE"},
		{"stray argument", []string{"--spec", bad, "x"}, 2, "usage"},
		{"unknown flag", []string{"--nope"}, 2, "flag provided but not defined"},
		{"bad level", []string{"--spec", bad, "--log-level", "loud"}, 2, "bad --log-level"},
		{"missing file", []string{"--spec", filepath.Join(dir, "none.json")}, 2, "no such file"},
		{"not json", []string{"--spec", garbage}, 2, "decode"},
		{"invalid spec", []string{"--spec", bad}, 2, "no program to run"},
		{"help", []string{"-h"}, 0, "-spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := Main(context.Background(), tc.args, &out, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Errorf("Main(%q) = %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.want)
			}
		})
	}
}

// Without PMIx events (PMI-1 wire, or before the server is up) prepare has
// nobody to wait for and returns at once; restored is a no-op.
func TestPrepareWithoutEvents(t *testing.T) {
	d, err := New(JobSpec{Job: "j", Nodes: []Node{{Hostname: "h", Ranks: []int{0}}}, Argv: []string{"true"}, TmpDir: t.TempDir(), Wire: WirePMI1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := d.Prepare(context.Background(), "j/1", time.Minute)
	if err != nil || res.Checkpoint != "j/1" || res.Registered != 0 || time.Since(start) > time.Second {
		t.Errorf("Prepare = %+v, %v after %v", res, err, time.Since(start))
	}
	if err := d.Restored(context.Background(), "j/1"); err != nil {
		t.Errorf("Restored: %v", err)
	}
}
