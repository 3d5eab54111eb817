package link

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/torpor-hpc/torpor/pmix/hostmsg"
)

// MaxFrame is the largest frame either side accepts (a fence result carries
// every job-node's modex blob).
const MaxFrame = 64 << 20

// ErrFrameTooLarge is returned for a frame above MaxFrame.
var ErrFrameTooLarge = errors.New("link frame too large")

// Message types.
const (
	// pmixd -> shim
	typeHello    = "hello"    // Hello
	typeFence    = "fence"    // ID, Fence
	typeModex    = "modex"    // ID, Modex
	typeFailed   = "failed"   // ID, Failure
	typePrepared = "prepared" // ID (of the prepare), Result or Err
	typeServed   = "served"   // ID (of the serve), Data or Err
	// shim -> pmixd
	typeWelcome   = "welcome"   // Welcome
	typeReply     = "reply"     // ID (of a fence, modex or failed), Data or Err
	typePrepare   = "prepare"   // ID, Prepare
	typeServe     = "serve"     // ID, Rank
	typeTerminate = "terminate" // Reason
)

// Hello is pmixd's first message on every connection.
type Hello struct {
	Job  string `json:"job"`
	Node int    `json:"node"`
	PID  int    `json:"pid"` // pmixd's pid in its own PID namespace (1 in a sandbox)
	// Generation counts pmixd's connections to a shim, from 0; it survives a
	// CRIU restore (it is in pmixd's memory), so the first hello after a
	// checkpoint has the generation before it plus one.
	Generation uint64 `json:"generation"`
}

// Welcome is the shim's answer to Hello.
type Welcome struct {
	// RestoredFrom is the checkpoint handle this job-node was just restored
	// from, or "" (first start, or resumed after a leave-running checkpoint).
	RestoredFrom string `json:"restored_from"`
}

type prepareReq struct {
	Checkpoint string `json:"checkpoint"`
	TimeoutMS  int64  `json:"timeout_ms"`
}

// failure is hostmsg.Failure on the wire (its error as text).
type failure struct {
	Job  string `json:"job"`
	Node int    `json:"node"`
	Rank int    `json:"rank"`
	Code int    `json:"code"`
	Err  string `json:"err,omitempty"`
}

// message is one frame's JSON body.
type message struct {
	Type    string                 `json:"type"`
	ID      uint64                 `json:"id,omitempty"`
	Hello   *Hello                 `json:"hello,omitempty"`
	Welcome *Welcome               `json:"welcome,omitempty"`
	Fence   *hostmsg.FenceRequest  `json:"fence,omitempty"`
	Modex   *hostmsg.ModexRequest  `json:"modex,omitempty"`
	Failure *failure               `json:"failure,omitempty"`
	Prepare *prepareReq            `json:"prepare,omitempty"`
	Result  *hostmsg.PrepareResult `json:"result,omitempty"`
	Rank    int                    `json:"rank,omitempty"`
	Reason  string                 `json:"reason,omitempty"`
	Data    []byte                 `json:"data,omitempty"`
	Err     string                 `json:"err,omitempty"`
}

// writeFrame writes m as a 4-byte big-endian length and its JSON.
func writeFrame(w io.Writer, m message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", m.Type, err)
	}
	if len(body) > MaxFrame {
		return fmt.Errorf("encode %s frame of %d bytes: %w", m.Type, len(body), ErrFrameTooLarge)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write %s frame: %w", m.Type, err)
	}
	return nil
}

// readFrame reads one frame.
func readFrame(r io.Reader) (message, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return message{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return message{}, fmt.Errorf("read frame of %d bytes: %w", n, ErrFrameTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return message{}, fmt.Errorf("read frame body: %w", err)
	}
	var m message
	if err := json.Unmarshal(body, &m); err != nil {
		return message{}, fmt.Errorf("decode frame: %w", err)
	}
	return m, nil
}

// wconn serialises writes to one connection.
type wconn struct {
	mu sync.Mutex
	c  net.Conn
}

func (w *wconn) send(m message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return writeFrame(w.c, m)
}
