package netquiesce

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// pattern is the byte at offset i of a test stream.
func pattern(i int64) byte { return byte(i*131 + i>>9) }

// stream writes total patterned bytes to an echo server over c at a steady
// pace and verifies every echoed byte. Received counts progress; done yields
// nil once every byte came back intact.
type stream struct {
	Received atomic.Int64
	conn     net.Conn
	done     chan error
}

func startStream(c net.Conn, total int64) *stream {
	s := &stream{conn: c, done: make(chan error, 2)}
	go func() {
		buf := make([]byte, 16<<10)
		for off := int64(0); off < total; {
			k := min(int64(len(buf)), total-off)
			for i := range k {
				buf[i] = pattern(off + i)
			}
			if _, err := c.Write(buf[:k]); err != nil {
				s.done <- fmt.Errorf("write at %d: %w", off, err)
				return
			}
			off += k
			time.Sleep(2 * time.Millisecond)
		}
	}()
	go func() {
		buf := make([]byte, 32<<10)
		var off int64
		for off < total {
			k, err := c.Read(buf)
			for i := range k {
				if buf[i] != pattern(off+int64(i)) {
					s.done <- fmt.Errorf("byte %d = %#x, want %#x", off+int64(i), buf[i], pattern(off+int64(i)))
					return
				}
			}
			off += int64(k)
			s.Received.Store(off)
			if err != nil && off < total {
				s.done <- fmt.Errorf("read at %d: %w", off, err)
				return
			}
		}
		s.done <- nil
	}()
	return s
}

// settle waits until the reader has verified every byte the kernel received
// on the connection (TCP_INFO's bytes_received), on two looks 50 ms apart
// with nothing received in between: once traffic is blocked, what was in
// flight has then been read and counted.
func (s *stream) settle(tb testing.TB) {
	tb.Helper()
	caughtUp := func() (uint64, bool) {
		got := tcpInfo(tb, s.conn).Bytes_received
		return got, uint64(s.Received.Load()) == got
	}
	waitFor(tb, "reader caught up with the kernel", func() bool {
		first, ok := caughtUp()
		if !ok {
			return false
		}
		time.Sleep(50 * time.Millisecond)
		second, ok := caughtUp()
		return ok && second == first
	})
}

func (s *stream) wait(timeout time.Duration) error {
	select {
	case err := <-s.done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("stream not complete after %v", timeout)
	}
}
