package criu

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	tcpstream "github.com/checkpoint-restore/go-criu/v7/crit/images/tcp-stream"
	"google.golang.org/protobuf/proto"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// TCPWindowFix is one connection whose saved window CRIU could not restore
// as it was dumped.
type TCPWindowFix struct {
	Image          string // tcp-stream-<inode>.img
	SndWl1, RcvNxt uint32
	RcvWnd         uint32
}

// FixTCPWindows makes every dumped TCP connection in dir restorable.
//
// CRIU saves a connection's in-order receive queue but not its out-of-order
// queue (segments that arrived after a lost one), while it saves snd_wl1 —
// the sequence number of the last segment that updated the send window —
// as the kernel holds it. When that segment was out of order and the
// receive window has since closed (a receiver slower than its sender), the
// saved snd_wl1 lies beyond rcv_nxt + rcv_wnd, and the kernel refuses the
// saved window at restore (TCP_REPAIR_WINDOW: EINVAL; CRIU: "Unable to set
// window parameters"), so the checkpoint cannot be restored. The
// out-of-order data is not in the images anyway (the peer sends it again),
// so the segment that set snd_wl1 is, for the restored connection, one that
// never arrived: snd_wl1 becomes rcv_nxt, the newest sequence number the
// restored connection has received. A later window update from the peer is
// accepted as it would have been.
func FixTCPWindows(dir string) ([]TCPWindowFix, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "tcp-stream-*.img"))
	if err != nil {
		return nil, err
	}
	var fixes []TCPWindowFix
	for _, p := range paths {
		fix, err := fixTCPWindow(p)
		if err != nil {
			return fixes, fmt.Errorf("%s: %w", filepath.Base(p), err)
		}
		if fix != nil {
			fixes = append(fixes, *fix)
		}
	}
	return fixes, nil
}

// after is the kernel's after(a, b) on 32-bit sequence numbers.
func after(a, b uint32) bool { return int32(b-a) < 0 }

func fixTCPWindow(path string) (*TCPWindowFix, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// An 8-byte magic, the entry's 32-bit length, the entry, then the
	// queues' bytes, which stay as they are.
	if len(data) < 12 {
		return nil, fmt.Errorf("%d bytes, too short for a tcp-stream image", len(data))
	}
	n := binary.LittleEndian.Uint32(data[8:12])
	if uint64(n) > uint64(len(data)-12) {
		return nil, fmt.Errorf("entry claims %d bytes, %d are left", n, len(data)-12)
	}
	var e tcpstream.TcpStreamEntry
	if err := proto.Unmarshal(data[12:12+n], &e); err != nil {
		return nil, err
	}
	if e.SndWl1 == nil || e.RcvWnd == nil {
		return nil, nil // no window saved: CRIU does not set one
	}
	rcvNxt := e.GetInqSeq()
	if !after(e.GetSndWl1(), rcvNxt+e.GetRcvWnd()) {
		return nil, nil
	}
	fix := &TCPWindowFix{Image: filepath.Base(path), SndWl1: e.GetSndWl1(), RcvNxt: rcvNxt, RcvWnd: e.GetRcvWnd()}
	e.SndWl1 = proto.Uint32(rcvNxt)
	entry, err := proto.Marshal(&e)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Write(data[:8])
	_ = binary.Write(&b, binary.LittleEndian, uint32(len(entry)))
	b.Write(entry)
	b.Write(data[12+n:])
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	return fix, atomicfile.Write(path, b.Bytes(), st.Mode().Perm())
}
