//go:build cgo

package libpmix

/*
#cgo pkg-config: pmix
#include "libpmix.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/cgo"
	"sync"
	"unsafe"
)

var (
	activeMu sync.RWMutex
	active   *Server // the one server of this process, target of upcalls
	used     bool    // a server was started in this process (see ErrRestart)
)

func current() *Server {
	activeMu.RLock()
	defer activeMu.RUnlock()
	return active
}

// Server is this process's PMIx server.
type Server struct {
	host Host
	opts Options
	log  *slog.Logger

	ctx    context.Context // ends at Finalize; bounds Fence and DirectModex
	cancel context.CancelFunc
	wg     sync.WaitGroup // upcall goroutines still to complete a library callback

	mu       sync.Mutex
	handlers map[uint64]EventHandler
	early    map[uint64][]Event // events that beat their handler's registration callback
	fenceSeq map[string]uint64  // next fence ordinal per participant signature
}

// NewServer returns a server whose module callbacks go to host.
func NewServer(host Host) *Server {
	return &Server{host: host, handlers: map[uint64]EventHandler{}, early: map[uint64][]Event{}, fenceSeq: map[string]uint64{}}
}

// Init starts the PMIx server (PMIx_server_init). Only one server may run per process.
func (s *Server) Init(opts Options) error {
	if opts.TmpDir == "" {
		return fmt.Errorf("init pmix server: %w: TmpDir is required", ErrBadParamValue)
	}
	if opts.SystemTmpDir == "" {
		opts.SystemTmpDir = opts.TmpDir
	}
	s.opts = opts
	s.log = opts.Logger
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	activeMu.Lock()
	defer activeMu.Unlock()
	if active != nil {
		return fmt.Errorf("init pmix server: %w", ErrAlreadyRunning)
	}
	if used {
		return fmt.Errorf("init pmix server: %w", ErrRestart)
	}
	infos := []Info{
		{KeyServerTmpDir, opts.TmpDir},
		{KeySystemTmpDir, opts.SystemTmpDir},
		{KeyServerToolSupport, false},
		{KeyServerSysSupport, false},
	}
	if opts.Nspace != "" {
		infos = append(infos, Info{KeyServerNspace, opts.Nspace}, Info{KeyServerRank, opts.Rank})
	}
	if opts.Hostname != "" {
		infos = append(infos, Info{KeyHostname, opts.Hostname})
	}
	arr, err := toCArray(infos)
	if err != nil {
		return fmt.Errorf("init pmix server: %w", err)
	}
	defer C.torpor_array_free(arr)
	// Upcalls may start as soon as the library runs: publish the server first.
	s.ctx, s.cancel = context.WithCancel(context.Background())
	active = s
	used = true
	if st := C.torpor_server_init(arr); st != C.PMIX_SUCCESS {
		active = nil
		s.cancel()
		return fmt.Errorf("init pmix server (tmpdir %s): %w", opts.TmpDir, Status(st))
	}
	s.log.Debug("pmix server up", "version", Version(), "tmpdir", opts.TmpDir)
	return nil
}

// Finalize ends pending fences and modex requests with an error, then stops the
// server (PMIx_server_finalize).
func (s *Server) Finalize() error {
	activeMu.Lock()
	if active != s {
		activeMu.Unlock()
		return fmt.Errorf("finalize pmix server: %w", ErrNotRunning)
	}
	activeMu.Unlock()
	s.cancel()
	s.wg.Wait()
	st := C.PMIx_server_finalize()
	activeMu.Lock()
	active = nil
	activeMu.Unlock()
	if st != C.PMIX_SUCCESS {
		return fmt.Errorf("finalize pmix server: %w", Status(st))
	}
	return nil
}

func (s *Server) running() error {
	if current() != s {
		return ErrNotRunning
	}
	return nil
}

// startOp runs call with a fresh op cell and waits for its callback. call
// returns the immediate status; PMIX_SUCCESS means the callback will come.
func startOp(ctx context.Context, infos []Info, call func(op *C.torpor_op_t) C.pmix_status_t) error {
	arr, err := toCArray(infos)
	if err != nil {
		return err
	}
	ch := make(chan Status, 1)
	h := cgo.NewHandle(ch)
	op := C.torpor_op_new(C.uintptr_t(h), arr)
	st := Status(call(op))
	switch st {
	case Success:
	case OperationSucceeded:
		C.torpor_array_free(arr)
		C.free(unsafe.Pointer(op))
		h.Delete()
		return nil
	default:
		C.torpor_array_free(arr)
		C.free(unsafe.Pointer(op))
		h.Delete()
		return st
	}
	select {
	case st := <-ch:
		if st != Success && st != OperationSucceeded {
			return st
		}
		return nil
	case <-ctx.Done():
		return ctx.Err() // the callback still frees the cell and the handle
	}
}

// RegisterNamespace registers a job with the full key set of m and this node's
// number of local ranks (PMIx_server_register_nspace).
func (s *Server) RegisterNamespace(ctx context.Context, m JobMap) error {
	if err := s.running(); err != nil {
		return err
	}
	infos, err := m.Infos()
	if err != nil {
		return fmt.Errorf("register namespace %s: %w", m.Nspace, err)
	}
	ns := C.CString(m.Nspace)
	defer C.free(unsafe.Pointer(ns))
	nlocal := C.int(len(m.LocalRanks()))
	if err := startOp(ctx, infos, func(op *C.torpor_op_t) C.pmix_status_t {
		return C.torpor_register_nspace(ns, nlocal, op)
	}); err != nil {
		return fmt.Errorf("register namespace %s: %w", m.Nspace, err)
	}
	return nil
}

// DeregisterNamespace drops a namespace and its local clients.
func (s *Server) DeregisterNamespace(ctx context.Context, nspace string) error {
	if err := s.running(); err != nil {
		return err
	}
	ns := C.CString(nspace)
	defer C.free(unsafe.Pointer(ns))
	if err := startOp(ctx, nil, func(op *C.torpor_op_t) C.pmix_status_t {
		C.torpor_deregister_nspace(ns, op)
		return C.PMIX_SUCCESS
	}); err != nil {
		return fmt.Errorf("deregister namespace %s: %w", nspace, err)
	}
	return nil
}

// RegisterClient registers a local rank (as the calling uid/gid) before it is forked.
func (s *Server) RegisterClient(ctx context.Context, p Proc) error {
	if err := s.running(); err != nil {
		return err
	}
	ns := C.CString(p.Nspace)
	defer C.free(unsafe.Pointer(ns))
	if err := startOp(ctx, nil, func(op *C.torpor_op_t) C.pmix_status_t {
		return C.torpor_register_client(ns, C.uint32_t(p.Rank), op)
	}); err != nil {
		return fmt.Errorf("register client %s: %w", p, err)
	}
	return nil
}

// SetupFork returns the variables a registered client needs in its
// environment (PMIX_NAMESPACE, PMIX_RANK, PMIX_SERVER_URI*, ...), as KEY=VALUE.
func (s *Server) SetupFork(p Proc) ([]string, error) {
	if err := s.running(); err != nil {
		return nil, err
	}
	ns := C.CString(p.Nspace)
	defer C.free(unsafe.Pointer(ns))
	var env **C.char
	st := C.torpor_setup_fork(ns, C.uint32_t(p.Rank), &env)
	defer C.torpor_free_argv(env)
	if st != C.PMIX_SUCCESS {
		return nil, fmt.Errorf("setup fork for %s: %w", p, Status(st))
	}
	var out []string
	for i := 0; env != nil; i++ {
		e := *(**C.char)(unsafe.Add(unsafe.Pointer(env), uintptr(i)*unsafe.Sizeof(env)))
		if e == nil {
			break
		}
		out = append(out, C.GoString(e))
	}
	return out, nil
}

// NotifyEvent raises an event with this server as the source (PMIx_Notify_event).
func (s *Server) NotifyEvent(ctx context.Context, code Status, rng Range, info []Info) error {
	if err := s.running(); err != nil {
		return err
	}
	ns := C.CString(s.opts.Nspace)
	defer C.free(unsafe.Pointer(ns))
	if err := startOp(ctx, info, func(op *C.torpor_op_t) C.pmix_status_t {
		return C.torpor_notify(C.pmix_status_t(code), ns, C.uint32_t(s.opts.Rank), C.pmix_data_range_t(rng), op)
	}); err != nil {
		return fmt.Errorf("notify event %d: %w", int32(code), err)
	}
	return nil
}

type evReg struct {
	ch chan evRegResult
}

type evRegResult struct {
	st  Status
	ref uint64
}

// RegisterEventHandler registers fn for the given codes (all codes when empty)
// and returns the handler's reference. fn runs on its own goroutine per event.
func (s *Server) RegisterEventHandler(ctx context.Context, codes []Status, info []Info, fn EventHandler) (uint64, error) {
	if err := s.running(); err != nil {
		return 0, err
	}
	arr, err := toCArray(info)
	if err != nil {
		return 0, fmt.Errorf("register event handler: %w", err)
	}
	var ccodes *C.pmix_status_t
	if len(codes) > 0 {
		ccodes = (*C.pmix_status_t)(C.malloc(C.size_t(len(codes)) * C.size_t(unsafe.Sizeof(C.pmix_status_t(0)))))
		defer C.free(unsafe.Pointer(ccodes))
		cs := unsafe.Slice(ccodes, len(codes))
		for i, c := range codes {
			cs[i] = C.pmix_status_t(c)
		}
	}
	reg := &evReg{ch: make(chan evRegResult, 1)}
	h := cgo.NewHandle(reg)
	op := C.torpor_op_new(C.uintptr_t(h), arr)
	st := Status(C.torpor_register_handler(ccodes, C.size_t(len(codes)), op))
	if st != Success && st != OperationSucceeded {
		C.torpor_array_free(arr)
		C.free(unsafe.Pointer(op))
		h.Delete()
		return 0, fmt.Errorf("register event handler: %w", st)
	}
	select {
	case r := <-reg.ch:
		if r.st != Success {
			return 0, fmt.Errorf("register event handler: %w", r.st)
		}
		s.mu.Lock()
		s.handlers[r.ref] = fn
		early := s.early[r.ref]
		delete(s.early, r.ref)
		s.mu.Unlock()
		for _, ev := range early {
			go fn(ev)
		}
		return r.ref, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("register event handler: %w", ctx.Err())
	}
}

// DeregisterEventHandler removes a handler registered with RegisterEventHandler.
func (s *Server) DeregisterEventHandler(ctx context.Context, ref uint64) error {
	if err := s.running(); err != nil {
		return err
	}
	err := startOp(ctx, nil, func(op *C.torpor_op_t) C.pmix_status_t {
		return C.torpor_deregister_handler(C.size_t(ref), op)
	})
	s.mu.Lock()
	delete(s.handlers, ref)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("deregister event handler %d: %w", ref, err)
	}
	return nil
}

type dmodexResult struct {
	st   Status
	data []byte
}

// DirectModexRequest asks the library for the modex data of a local process on
// behalf of another host (PMIx_server_dmodex_request); it returns once the
// process has committed its data.
func (s *Server) DirectModexRequest(ctx context.Context, p Proc) ([]byte, error) {
	if err := s.running(); err != nil {
		return nil, err
	}
	ns := C.CString(p.Nspace)
	defer C.free(unsafe.Pointer(ns))
	ch := make(chan dmodexResult, 1)
	h := cgo.NewHandle(ch)
	if st := Status(C.torpor_dmodex_request(ns, C.uint32_t(p.Rank), C.uintptr_t(h))); st != Success {
		h.Delete()
		return nil, fmt.Errorf("direct modex request for %s: %w", p, st)
	}
	select {
	case r := <-ch:
		if r.st != Success {
			return nil, fmt.Errorf("direct modex request for %s: %w", p, r.st)
		}
		return r.data, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("direct modex request for %s: %w", p, ctx.Err())
	}
}

// statusOf maps a host error to the status handed back to the library.
func statusOf(err error) Status {
	if err == nil {
		return Success
	}
	var st Status
	if errors.As(err, &st) {
		return st
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return ErrTimeout
	}
	return ErrGeneric
}
