package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func newStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "ckpt"), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// images is node name -> relative path -> content.
type images map[string]map[string][]byte

func smallImages() images {
	return images{
		"n0": {"pages-1.img": bytes.Repeat([]byte("p0"), 4096), "core-100.img": []byte("core of rank 0"), "sub/tcp.img": []byte("tcp")},
		"n1": {"pages-1.img": bytes.Repeat([]byte("p1"), 2048), "core-200.img": []byte("core of rank 2")},
	}
}

// dumpNodes writes imgs into p the way a shim does (files created 0644 on purpose).
func dumpNodes(t testing.TB, p *Pending, imgs images) {
	t.Helper()
	for node, files := range imgs {
		dir, err := p.NodeDir(node)
		if err != nil {
			t.Fatal(err)
		}
		for rel, data := range files {
			fp := filepath.Join(dir, filepath.FromSlash(rel))
			if err := os.MkdirAll(filepath.Dir(fp), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(fp, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := WriteNodeManifest(context.Background(), dir); err != nil {
			t.Fatal(err)
		}
	}
}

func testManifest() JobManifest {
	return JobManifest{
		Kind:         KindCheckpoint,
		LeaveRunning: true,
		Spec:         json.RawMessage(`{"command":["./ring"],"np":4}`),
		Nodes: []NodeRef{
			{Name: "n0", Host: "hostA", IP: "198.18.0.10", Hostname: "jn0"},
			{Name: "n1", Host: "hostB", IP: "198.18.0.11", Hostname: "jn1"},
		},
		Phases: map[string]Duration{"freeze": Duration(3 * time.Millisecond), "dump": Duration(1500 * time.Millisecond)},
	}
}

func commitOne(t testing.TB, s *Store, job string) Checkpoint {
	t.Helper()
	p, err := s.Begin(job)
	if err != nil {
		t.Fatal(err)
	}
	dumpNodes(t, p, smallImages())
	cp, err := p.Commit(testManifest())
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

func handles(cps []Checkpoint) []string {
	var hs []string
	for _, c := range cps {
		hs = append(hs, c.Handle)
	}
	return hs
}
