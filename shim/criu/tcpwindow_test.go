package criu

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	tcpstream "github.com/checkpoint-restore/go-criu/v7/crit/images/tcp-stream"
	"google.golang.org/protobuf/proto"
)

// writeTCPStream writes a tcp-stream image: magic, entry, queue bytes.
func writeTCPStream(t *testing.T, path string, e *tcpstream.TcpStreamEntry, queues []byte) []byte {
	t.Helper()
	entry, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.Write([]byte{0x54, 0x56, 0x54, 0x58, 0x43, 0x53, 0x55, 0x54}) // a magic; only its length matters here
	_ = binary.Write(&b, binary.LittleEndian, uint32(len(entry)))
	b.Write(entry)
	b.Write(queues)
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func readTCPStream(t *testing.T, path string) (*tcpstream.TcpStreamEntry, []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint32(data[8:12])
	var e tcpstream.TcpStreamEntry
	if err := proto.Unmarshal(data[12:12+n], &e); err != nil {
		t.Fatal(err)
	}
	return &e, data[12+n:]
}

// TestFixTCPWindows: the numbers are those of a receiver whose checkpoint
// CRIU could not restore ("Unable to set window parameters"): a zero
// window, rcv_nxt = rcv_wup, and snd_wl1 472048 bytes beyond rcv_nxt.
func TestFixTCPWindows(t *testing.T) {
	dir := t.TempDir()
	queues := []byte("receive queue bytes, then send queue bytes")
	bad := &tcpstream.TcpStreamEntry{
		InqLen: proto.Uint32(uint32(len(queues))), InqSeq: proto.Uint32(3686917264),
		OutqLen: proto.Uint32(0), OutqSeq: proto.Uint32(2541568511),
		OptMask: proto.Uint32(7), SndWscale: proto.Uint32(10), MssClamp: proto.Uint32(1460),
		SndWl1: proto.Uint32(3687389312), SndWnd: proto.Uint32(65536), MaxWindow: proto.Uint32(65536),
		RcvWnd: proto.Uint32(0), RcvWup: proto.Uint32(3686917264),
	}
	writeTCPStream(t, filepath.Join(dir, "tcp-stream-1.img"), bad, queues)
	// Fine as dumped: snd_wl1 behind rcv_nxt, across the 2^32 wrap.
	good := proto.Clone(bad).(*tcpstream.TcpStreamEntry)
	good.InqSeq, good.SndWl1, good.RcvWup, good.RcvWnd = proto.Uint32(100), proto.Uint32(4294967000), proto.Uint32(50), proto.Uint32(65536)
	goodBytes := writeTCPStream(t, filepath.Join(dir, "tcp-stream-2.img"), good, queues)
	// No window saved at all (an old kernel): left alone.
	noWin := proto.Clone(bad).(*tcpstream.TcpStreamEntry)
	noWin.SndWl1, noWin.RcvWnd = nil, nil
	noWinBytes := writeTCPStream(t, filepath.Join(dir, "tcp-stream-3.img"), noWin, queues)

	fixes, err := FixTCPWindows(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(fixes) != 1 || fixes[0].Image != "tcp-stream-1.img" || fixes[0].SndWl1 != 3687389312 || fixes[0].RcvNxt != 3686917264 {
		t.Fatalf("fixes = %+v, want tcp-stream-1.img alone", fixes)
	}
	e, q := readTCPStream(t, filepath.Join(dir, "tcp-stream-1.img"))
	if e.GetSndWl1() != 3686917264 {
		t.Errorf("snd_wl1 = %d, want rcv_nxt 3686917264", e.GetSndWl1())
	}
	// What the kernel checks at TCP_REPAIR_WINDOW now holds.
	if after(e.GetSndWl1(), e.GetInqSeq()+e.GetRcvWnd()) || after(e.GetRcvWup(), e.GetInqSeq()) {
		t.Errorf("window still refused: %v", e)
	}
	e.SndWl1 = bad.SndWl1
	if !proto.Equal(e, bad) {
		t.Errorf("fields other than snd_wl1 changed:\n got %v\nwant %v", e, bad)
	}
	if !bytes.Equal(q, queues) {
		t.Errorf("queue bytes changed: %q", q)
	}
	for name, want := range map[string][]byte{"tcp-stream-2.img": goodBytes, "tcp-stream-3.img": noWinBytes} {
		if got, _ := os.ReadFile(filepath.Join(dir, name)); !bytes.Equal(got, want) {
			t.Errorf("%s was rewritten", name)
		}
	}
	if fixes, err := FixTCPWindows(dir); err != nil || len(fixes) != 0 {
		t.Errorf("second pass: %v, %v; want nothing to fix", fixes, err)
	}
	// A truncated image is an error naming it, not a panic.
	os.WriteFile(filepath.Join(dir, "tcp-stream-4.img"), []byte{1, 2, 3}, 0o600)
	if _, err := FixTCPWindows(dir); err == nil {
		t.Error("truncated image: no error")
	}
}
