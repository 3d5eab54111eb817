package pmi1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// Events receives what ranks tell the process manager. Methods are called
// from connection goroutines and must not block.
type Events interface {
	Connected(rank int)
	Finalized(rank int)
	Aborted(rank int, code int, msg string)
}

// Exchange completes a job-wide barrier: it contributes this node's new
// puts (an opaque blob) and returns the concatenation of every node's blob.
// A single-node job can use nil, which returns data as is.
type Exchange func(ctx context.Context, data []byte) ([]byte, error)

// Config describes the job as this node's PMI-1 server sees it.
type Config struct {
	KVSName    string // any string without spaces, e.g. the job id
	Size       int    // ranks in the job (PMI_SIZE)
	AppNum     int
	LocalRanks []int  // the ranks this server attaches
	Mapping    string // PMI_process_mapping, see Mapping; "" leaves the key unset
	Exchange   Exchange
	Events     Events
	Logger     *slog.Logger
}

// Server answers the PMI-1 requests of one job-node's ranks.
type Server struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	kvs      map[string]string // visible to get
	pending  map[string]string // put since the last barrier
	inBar    []*conn           // ranks waiting in barrier_in
	conns    map[int]*conn
	barriers uint64
}

type conn struct {
	rank int
	f    *os.File
	mu   sync.Mutex
}

func (c *conn) send(m Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.f.Write(Format(m))
	return err
}

// NewServer validates cfg and returns a server with no ranks attached.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Size <= 0 || len(cfg.LocalRanks) == 0 {
		return nil, fmt.Errorf("pmi1 server: job of %d ranks with %d local ranks", cfg.Size, len(cfg.LocalRanks))
	}
	if cfg.KVSName == "" || len(cfg.KVSName) >= KVSNameMax {
		return nil, fmt.Errorf("pmi1 server: kvs name %q must be 1..%d bytes", cfg.KVSName, KVSNameMax-1)
	}
	for _, r := range cfg.LocalRanks {
		if r < 0 || r >= cfg.Size {
			return nil, fmt.Errorf("pmi1 server: local rank %d out of range 0..%d", r, cfg.Size-1)
		}
	}
	if cfg.Exchange == nil {
		cfg.Exchange = func(_ context.Context, data []byte) ([]byte, error) { return data, nil }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, log: cfg.Logger, kvs: map[string]string{}, pending: map[string]string{}, conns: map[int]*conn{}}
	if cfg.Mapping != "" {
		s.kvs["PMI_process_mapping"] = cfg.Mapping
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Attach creates the connection for rank and returns the rank's end, to be
// passed to the rank (exec.Cmd.ExtraFiles) and named in PMI_FD; the caller
// closes it after starting the rank.
func (s *Server) Attach(rank int) (*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pmi1 socketpair for rank %d: %w", rank, err)
	}
	ours := os.NewFile(uintptr(fds[0]), fmt.Sprintf("pmi1-server-%d", rank))
	theirs := os.NewFile(uintptr(fds[1]), fmt.Sprintf("pmi1-rank-%d", rank))
	c := &conn{rank: rank, f: ours}
	s.mu.Lock()
	s.conns[rank] = c
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve(c)
	}()
	return theirs, nil
}

// Env is what a rank needs in its environment to find its server on fd.
func Env(rank, size, fd int) []string {
	return []string{"PMI_FD=" + strconv.Itoa(fd), "PMI_RANK=" + strconv.Itoa(rank), "PMI_SIZE=" + strconv.Itoa(size)}
}

// Close drops every connection and waits for the connection goroutines.
func (s *Server) Close() {
	s.cancel()
	s.mu.Lock()
	for _, c := range s.conns {
		_ = c.f.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Barriers is the number of completed job-wide barriers.
func (s *Server) Barriers() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.barriers
}

func (s *Server) serve(c *conn) {
	defer c.f.Close()
	br := bufio.NewReaderSize(c.f, MaxLine+2)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.log.Warn("pmi1 request too long; closing", "rank", c.rank)
			return
		}
		if err != nil {
			if len(line) > 0 || !errors.Is(err, io.EOF) {
				s.log.Debug("pmi1 connection ended", "rank", c.rank, "err", err)
			}
			return
		}
		m, perr := Parse(line)
		if perr != nil {
			s.log.Warn("pmi1 bad request; closing", "rank", c.rank, "err", perr)
			return
		}
		s.log.Debug("pmi1 request", "rank", c.rank, "cmd", m.Cmd, "key", m.Vals["key"])
		out, ok := s.handle(c, m)
		if !ok {
			continue
		}
		if err := c.send(out); err != nil {
			s.log.Debug("pmi1 reply", "rank", c.rank, "err", err)
			return
		}
	}
}

// handle answers one request; ok=false means no reply now.
func (s *Server) handle(c *conn, m Message) (Message, bool) {
	switch m.Cmd {
	case "init":
		if s.cfg.Events != nil {
			s.cfg.Events.Connected(c.rank)
		}
		return reply("response_to_init", "pmi_version", "1", "pmi_subversion", "1", "rc", "0"), true
	case "get_maxes":
		return reply("maxes", "kvsname_max", strconv.Itoa(KVSNameMax), "keylen_max", strconv.Itoa(KeyLenMax),
			"vallen_max", strconv.Itoa(ValLenMax)), true
	case "get_appnum":
		return reply("appnum", "appnum", strconv.Itoa(s.cfg.AppNum)), true
	case "get_my_kvsname":
		return reply("my_kvsname", "kvsname", s.cfg.KVSName), true
	case "get_universe_size":
		return reply("universe_size", "size", strconv.Itoa(s.cfg.Size)), true
	case "put":
		k, _ := m.Get("key")
		v, _ := m.Get("value")
		if kvs, _ := m.Get("kvsname"); kvs != s.cfg.KVSName {
			return reply("put_result", "rc", "-1", "msg", "unknown_kvsname"), true
		}
		if k == "" || len(k) > KeyLenMax || len(v) > ValLenMax {
			return reply("put_result", "rc", "-1", "msg", "bad_key_or_value"), true
		}
		s.mu.Lock()
		s.pending[k] = v
		s.mu.Unlock()
		return reply("put_result", "rc", "0", "msg", "success"), true
	case "get":
		k, _ := m.Get("key")
		s.mu.Lock()
		v, ok := s.kvs[k]
		s.mu.Unlock()
		if kvs, _ := m.Get("kvsname"); kvs != s.cfg.KVSName || !ok {
			return reply("get_result", "rc", "-1", "msg", "key_"+k+"_not_found", "value", "unknown"), true
		}
		return reply("get_result", "rc", "0", "msg", "success", "value", v), true
	case "barrier_in":
		s.barrierIn(c)
		return Message{}, false
	case "finalize":
		if s.cfg.Events != nil {
			s.cfg.Events.Finalized(c.rank)
		}
		return reply("finalize_ack"), true
	case "abort":
		code, err := strconv.Atoi(m.Vals["exitcode"])
		if err != nil {
			code = 1
		}
		if s.cfg.Events != nil {
			s.cfg.Events.Aborted(c.rank, code, m.Vals["msg"])
		}
		return Message{}, false // the rank waits to be killed
	default:
		s.log.Warn("pmi1 unsupported command", "rank", c.rank, "cmd", m.Cmd)
		return reply(m.Cmd+"_result", "rc", "-1", "msg", "unsupported_command"), true
	}
}

// barrierIn parks c; the last local rank starts the job-wide exchange.
func (s *Server) barrierIn(c *conn) {
	s.mu.Lock()
	s.inBar = append(s.inBar, c)
	if len(s.inBar) < len(s.cfg.LocalRanks) {
		s.mu.Unlock()
		return
	}
	waiting, puts := s.inBar, s.pending
	s.inBar, s.pending = nil, map[string]string{}
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		all, err := s.cfg.Exchange(s.ctx, encodePuts(puts))
		if err == nil {
			s.mu.Lock()
			err = decodePuts(all, s.kvs)
			s.barriers++
			s.mu.Unlock()
		}
		if err != nil {
			// MPICH has no error reply for a barrier: drop the ranks, whose
			// PMI calls then fail and end them.
			s.log.Error("pmi1 barrier failed; closing rank connections", "err", err)
			for _, w := range waiting {
				_ = w.f.Close()
			}
			return
		}
		for _, w := range waiting {
			if err := w.send(reply("barrier_out")); err != nil {
				s.log.Debug("pmi1 barrier_out", "rank", w.rank, "err", err)
			}
		}
	}()
}
