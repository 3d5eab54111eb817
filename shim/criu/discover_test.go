package criu

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func fakeBinary(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho 'Version: 4.2.1'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLocatorOrder(t *testing.T) {
	dir := t.TempDir()
	flag := fakeBinary(t, dir, "flag/criu")
	env := fakeBinary(t, dir, "env/criu")
	cfg := fakeBinary(t, dir, "cfg/criu")
	prefix := filepath.Join(dir, "prefix")
	prefixBin := fakeBinary(t, prefix, "bin/criu")
	onPath := fakeBinary(t, dir, "path/criu")
	notExec := filepath.Join(dir, "plain")
	if err := os.WriteFile(notExec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	emptyPrefix := filepath.Join(dir, "empty")

	pathHit := func(string) (string, error) { return onPath, nil }
	pathMiss := func(string) (string, error) { return "", errors.New("not found") }

	tests := []struct {
		name    string
		loc     Locator
		env     string
		want    string
		wantSrc Source
		wantErr error
	}{
		{"flag wins", Locator{Flag: flag, Config: cfg, Prefix: prefix, LookPath: pathHit}, env, flag, SourceFlag, nil},
		{"env before config", Locator{Config: cfg, Prefix: prefix, LookPath: pathHit}, env, env, SourceEnv, nil},
		{"config before prefix", Locator{Config: cfg, Prefix: prefix, LookPath: pathHit}, "", cfg, SourceConfig, nil},
		{"prefix before PATH", Locator{Prefix: prefix, LookPath: pathHit}, "", prefixBin, Source("private prefix " + prefix), nil},
		{"PATH last", Locator{Prefix: emptyPrefix, LookPath: pathHit}, "", onPath, SourcePath, nil},
		{"nothing", Locator{Prefix: emptyPrefix, LookPath: pathMiss}, "", "", "", ErrNotFound},
		{"explicit missing file is an error", Locator{Flag: filepath.Join(dir, "nope"), Prefix: prefix, LookPath: pathHit}, "", "", "", os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.loc.Getenv = func(k string) string {
				if k == EnvCRIU {
					return tt.env
				}
				return ""
			}
			b, err := tt.loc.Find()
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Find() error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Find(): %v", err)
			}
			if b.Path != tt.want || b.Source != tt.wantSrc {
				t.Fatalf("Find() = %+v, want %s from %s", b, tt.want, tt.wantSrc)
			}
		})
	}
	t.Run("explicit non-executable is an error", func(t *testing.T) {
		_, err := Locator{Flag: notExec, LookPath: pathHit, Getenv: func(string) string { return "" }}.Find()
		if err == nil {
			t.Fatal("Find() accepted a non-executable --criu")
		}
	})
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    Version
		wantErr bool
	}{
		{"Version: 4.2.1\n", 40201, false},
		{"Version: 4.2\nGitID: v4.2-12-gabc\n", 40200, false},
		{"Version: 3.17.1\n", 31701, false},
		{"Version: 4.1-rc2\n", 40100, false},
		{"criu: unknown option\n", 0, true},
		{"Version: banana\n", 0, true},
		{"Version: 4\n", 0, true},
		{"Version: 4.2.1.7\n", 0, true},
		{"Version: 4.200.1\n", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if s := Version(40201).String(); s != "4.2.1" {
		t.Errorf("Version(40201).String() = %q", s)
	}
}

func TestCheckVersion(t *testing.T) {
	tests := []struct {
		v       Version
		kernel  string
		wantErr bool
	}{
		{40201, "6.18.44-fc-v769", false},
		{40108, "6.18.44-fc-v769", true},
		{40108, "6.16.0", true},
		{40108, "6.15.2", false},
		{31701, "6.13.1", true},
		{31701, "6.1.0-18-amd64", false},
		{40200, "7.0.0", false},
	}
	for _, tt := range tests {
		err := CheckVersion(tt.v, tt.kernel)
		if (err != nil) != tt.wantErr {
			t.Errorf("CheckVersion(%v, %q) = %v, wantErr %v", tt.v, tt.kernel, err, tt.wantErr)
		}
		if err != nil && !errors.Is(err, ErrTooOld) {
			t.Errorf("CheckVersion error %v is not ErrTooOld", err)
		}
	}
}

func TestKernelVersion(t *testing.T) {
	for in, want := range map[string][2]int{"6.18.44-fc": {6, 18}, "5.10": {5, 10}, "6.1rc": {6, 1}, "junk": {0, 0}, "": {0, 0}} {
		ma, mi := KernelVersion(in)
		if ma != want[0] || mi != want[1] {
			t.Errorf("KernelVersion(%q) = %d.%d, want %d.%d", in, ma, mi, want[0], want[1])
		}
	}
}
