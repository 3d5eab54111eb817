//go:build !cgo

package libpmix

import (
	"context"
	"strconv"
)

// Server is this process's PMIx server. Built without cgo, every operation
// fails with ErrNotSupported.
type Server struct{ host Host }

// NewServer returns a server whose module callbacks go to host.
func NewServer(host Host) *Server { return &Server{host: host} }

// Init fails: no libpmix in this build.
func (s *Server) Init(Options) error { return ErrNotSupported }

// Finalize fails: no libpmix in this build.
func (s *Server) Finalize() error { return ErrNotSupported }

// RegisterNamespace fails: no libpmix in this build.
func (s *Server) RegisterNamespace(context.Context, JobMap) error { return ErrNotSupported }

// DeregisterNamespace fails: no libpmix in this build.
func (s *Server) DeregisterNamespace(context.Context, string) error { return ErrNotSupported }

// RegisterClient fails: no libpmix in this build.
func (s *Server) RegisterClient(context.Context, Proc) error { return ErrNotSupported }

// SetupFork fails: no libpmix in this build.
func (s *Server) SetupFork(Proc) ([]string, error) { return nil, ErrNotSupported }

// NotifyEvent fails: no libpmix in this build.
func (s *Server) NotifyEvent(context.Context, Status, Range, []Info) error { return ErrNotSupported }

// RegisterEventHandler fails: no libpmix in this build.
func (s *Server) RegisterEventHandler(context.Context, []Status, []Info, EventHandler) (uint64, error) {
	return 0, ErrNotSupported
}

// DeregisterEventHandler fails: no libpmix in this build.
func (s *Server) DeregisterEventHandler(context.Context, uint64) error { return ErrNotSupported }

// DirectModexRequest fails: no libpmix in this build.
func (s *Server) DirectModexRequest(context.Context, Proc) ([]byte, error) {
	return nil, ErrNotSupported
}

// Version reports that libpmix is not compiled in.
func Version() string { return "none (built without cgo)" }

func statusString(s Status) string { return "status " + strconv.Itoa(int(s)) }

// Available reports whether this build can host a PMIx server.
func Available() bool { return false }
