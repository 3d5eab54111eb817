package catalog

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkVerify measures verification throughput of a 256 MiB, two-node
// checkpoint (mostly the page cache: it shows the hashing cost, the floor under
// the disk's speed).
func BenchmarkVerify(b *testing.B) {
	s := newStore(b)
	p, err := s.Begin("bench")
	if err != nil {
		b.Fatal(err)
	}
	const perNode = 128 << 20
	rng := rand.NewChaCha8([32]byte{})
	for _, node := range []string{"n0", "n1"} {
		dir, err := p.NodeDir(node)
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, "pages-1.img"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyN(f, rng, perNode); err != nil {
			b.Fatal(err)
		}
		f.Close()
		if _, err := WriteNodeManifest(context.Background(), dir); err != nil {
			b.Fatal(err)
		}
	}
	cp, err := p.Commit(JobManifest{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(2 * perNode)
	b.ResetTimer()
	for b.Loop() {
		if err := s.Verify(context.Background(), cp.Handle); err != nil {
			b.Fatal(err)
		}
	}
}
