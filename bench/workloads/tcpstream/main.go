// Command tcpstream is torpor's checkpoint workload for TCP: one side sends a
// deterministic byte stream over one connection, the other verifies every
// byte. Progress is published in a status file that is kept open and
// rewritten in place with a fixed width (its size never changes, which CRIU
// checks on restore), so it can be read from outside at any time.
//
//	tcpstream -listen :7000 -status /x/recv.status [-read-rate 32M] [-rcvbuf 1M]
//	tcpstream -connect 198.19.0.1:7000 -status /x/send.status [-chunk 1024] [-rate 0]
//
// Status file contents: "<bytes> ok\n" or "<offset> BAD want=.. got=..\n".
// The receiver exits 3 on the first bad byte.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const statusWidth = 64

func main() {
	listen := flag.String("listen", "", "receive and verify on this address")
	connect := flag.String("connect", "", "send to this address")
	status := flag.String("status", "", "status file (required)")
	key := flag.Uint64("key", 0x746f72706f72, "stream key")
	chunk := flag.Int("chunk", 1024, "bytes per write (sender) or read (receiver)")
	rate := flag.String("rate", "0", "sender limit in bytes/s (k, M suffixes), 0 = unlimited")
	readRate := flag.String("read-rate", "0", "receiver limit in bytes/s, 0 = unlimited; a slow reader keeps both queues full")
	rcvbuf := flag.String("rcvbuf", "0", "receiver's SO_RCVBUF (k, M suffixes), 0 = the kernel's autotuning up to net.ipv4.tcp_rmem")
	flag.Parse()
	if *status == "" || (*listen == "") == (*connect == "") {
		fmt.Fprintln(os.Stderr, "usage: tcpstream (-listen ADDR | -connect ADDR) -status FILE")
		os.Exit(2)
	}
	st, err := openStatus(*status)
	if err != nil {
		fatal(err)
	}
	p := pattern{key: *key}
	if *listen != "" {
		r, err := parseRate(*readRate)
		if err != nil {
			fatal(err)
		}
		rb, err := parseRate(*rcvbuf)
		if err != nil {
			fatal(err)
		}
		os.Exit(receive(*listen, p, *chunk, r, int(rb), st))
	}
	r, err := parseRate(*rate)
	if err != nil {
		fatal(err)
	}
	os.Exit(send(*connect, p, *chunk, r, st))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "tcpstream:", err)
	os.Exit(1)
}

func parseRate(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "k"):
		mult, s = 1<<10, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size or rate %q: a whole number, optionally with k or M", s)
	}
	return v * mult, nil
}

// statusFile is rewritten in place every 100 ms by a publisher goroutine.
type statusFile struct {
	f     *os.File
	count atomic.Uint64
	bad   atomic.Pointer[string]
}

func openStatus(path string) (*statusFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open status file: %w", err)
	}
	s := &statusFile{f: f}
	if err := s.publish(); err != nil {
		return nil, err
	}
	go func() {
		for range time.Tick(100 * time.Millisecond) {
			_ = s.publish()
		}
	}()
	return s, nil
}

func (s *statusFile) publish() error {
	line := fmt.Sprintf("%d ok", s.count.Load())
	if b := s.bad.Load(); b != nil {
		line = *b
	}
	if len(line) > statusWidth-1 {
		line = line[:statusWidth-1]
	}
	buf := []byte(fmt.Sprintf("%-*s\n", statusWidth-1, line))
	_, err := s.f.WriteAt(buf, 0)
	return err
}

// limiter sleeps so that n bytes per second are not exceeded.
type limiter struct {
	rate  int64
	start time.Time
	done  int64
}

func (l *limiter) wait(n int) {
	if l.rate <= 0 {
		return
	}
	if l.start.IsZero() {
		l.start = time.Now()
	}
	l.done += int64(n)
	due := l.start.Add(time.Duration(float64(l.done) / float64(l.rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}

func receive(addr string, p pattern, chunk int, rate int64, rcvbuf int, st *statusFile) int {
	// SO_RCVBUF is set on the listener, before listen(2): the accepted
	// connection inherits it, and its window scale is chosen for it.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		if rcvbuf <= 0 {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp4", addr)
	if err != nil {
		fatal(err)
	}
	conn, err := ln.Accept()
	if err != nil {
		fatal(err)
	}
	ln.Close()
	buf := make([]byte, chunk)
	scratch := make([]byte, chunk)
	lim := limiter{rate: rate}
	var off uint64
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if i := p.check(buf[:n], off, scratch); i >= 0 {
				want := make([]byte, 1)
				p.fill(want, off+uint64(i))
				msg := fmt.Sprintf("%d BAD want=%#02x got=%#02x", off+uint64(i), want[0], buf[i])
				st.bad.Store(&msg)
				_ = st.publish()
				fmt.Fprintln(os.Stderr, "tcpstream: bad byte at offset", off+uint64(i))
				return 3
			}
			off += uint64(n)
			st.count.Store(off)
			lim.wait(n)
		}
		if err != nil {
			_ = st.publish()
			if errors.Is(err, io.EOF) {
				return 0
			}
			msg := fmt.Sprintf("%d ERR %v", off, err)
			st.bad.Store(&msg)
			_ = st.publish()
			return 4
		}
	}
}

func send(addr string, p pattern, chunk int, rate int64, st *statusFile) int {
	var conn net.Conn
	var err error
	for i := 0; i < 100; i++ { // the receiver may still be starting
		if conn, err = net.Dial("tcp4", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		fatal(err)
	}
	buf := make([]byte, chunk)
	lim := limiter{rate: rate}
	var off uint64
	for {
		p.fill(buf, off)
		n, err := conn.Write(buf)
		off += uint64(n)
		st.count.Store(off)
		if err != nil {
			msg := fmt.Sprintf("%d ERR %v", off, err)
			st.bad.Store(&msg)
			_ = st.publish()
			return 4
		}
		lim.wait(n)
	}
}
