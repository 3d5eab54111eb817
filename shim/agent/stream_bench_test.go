package agent

import (
	"context"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// memImages sends size bytes of one pages image from memory, in imageChunk
// pieces: the transfer alone, without a dump or a disk to read.
type memImages struct{ size int }

func (m memImages) SendImages(_ context.Context, _ agentapi.NodeRef, _ string, send func(agentapi.ImageChunk) error) (string, error) {
	buf := make([]byte, imageChunk)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for off := 0; off < m.size; off += len(buf) {
		if err := send(agentapi.ImageChunk{Name: "pages-1.img", Offset: int64(off), Data: buf}); err != nil {
			return "", err
		}
	}
	return "abc", nil
}

func (m memImages) SendStored(ctx context.Context, _, _ string, send func(agentapi.ImageChunk) error) (string, error) {
	return m.SendImages(ctx, agentapi.NodeRef{}, "", send)
}

// BenchmarkFetchImages: one fetch of 256 MiB from another shim over mutual
// TLS on loopback, into the image directory.
//
//	go test ./shim/agent -run '^$' -bench FetchImages -cpuprofile cpu.out
func BenchmarkFetchImages(b *testing.B) {
	testutil.RequireRoot(b, "image directories must be root's")
	const size = 256 << 20
	stls, ctls := shimTLS(b)
	dst := imageAgent(b, "h2", ctls)
	addr := serveImages(b, stls, memImages{size: size})
	b.SetBytes(size)
	for b.Loop() {
		dir, _, err := dst.fetchImages(context.Background(), "j", "n0", "j/1", addr)
		if err != nil {
			b.Fatal(err)
		}
		_ = dir
	}
}
