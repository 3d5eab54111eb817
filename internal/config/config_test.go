package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Config
		wantErr string
	}{
		{"empty file keeps defaults", "", Defaults(), ""},
		{"criu set", "criu: /opt/x/criu\n", func() Config { c := Defaults(); c.CRIU = "/opt/x/criu"; return c }(), ""},
		{"keep", "keep: [out, /scratch/restart]\nkeep_max: 4G\n", func() Config {
			c := Defaults()
			c.Keep, c.KeepMax = []string{"out", "/scratch/restart"}, "4G"
			return c
		}(), ""},
		{"metrics", "metrics_listen: 127.0.0.1:9470\nshim_metrics_listen: 127.0.0.1:9471\n", func() Config {
			c := Defaults()
			c.MetricsListen, c.ShimMetricsListen = "127.0.0.1:9470", "127.0.0.1:9471"
			return c
		}(), ""},
		{"unknown key", "cryu: /opt/x/criu\n", Config{}, "field cryu not found"},
		{"bad yaml", "criu: [\n", Config{}, "parse config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in), "test.yaml")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse() error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("Load of a missing, explicitly named file succeeded")
	}
	p := filepath.Join(dir, "torpor.yaml")
	if err := os.WriteFile(p, []byte("state_dir: /tmp/s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvPath, p)
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != "/tmp/s" || cfg.CheckpointDir != Defaults().CheckpointDir {
		t.Fatalf("Load via $%s = %+v", EnvPath, cfg)
	}
}
