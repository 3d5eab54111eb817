// Package libpmix binds the PMIx 4.2 server library (libpmix) for torpor's pmixd.
//
// It is the only package in torpor that imports "C". Built with CGO_ENABLED=0 it
// compiles to a stub whose operations return ErrNotSupported, so the rest of the
// module builds and vets without a C toolchain.
//
// One PMIx server may run per process (a libpmix limitation). Upcalls from the
// library arrive on its progress thread; they copy what they need and return at
// once, and anything that may wait (fences, direct modex) runs on a goroutine that
// completes the library's callback later.
package libpmix

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
)

// ErrNotSupported is returned by every operation of a binary built without cgo.
var ErrNotSupported = errors.New("pmix server support not compiled in: rebuild torpor with CGO_ENABLED=1 and libpmix-dev (pkg-config pmix) installed")

// ErrAlreadyRunning is returned by Init when this process already hosts a PMIx server.
var ErrAlreadyRunning = errors.New("a pmix server is already running in this process")

// ErrRestart is returned by Init after a server of this process was
// finalized: libpmix 4.2.2 cannot start a second server in the same process
// (its listener thread aborts in FD_SET). Run each server in its own process.
var ErrRestart = errors.New("a pmix server cannot be started twice in one process (libpmix 4.2 limitation): run it in a fresh process")

// ErrNotRunning is returned by calls made before Init or after Finalize.
var ErrNotRunning = errors.New("pmix server is not running")

// Status is a pmix_status_t. Negative values are errors or event codes.
type Status int32

// Status codes torpor uses (values from pmix_common.h, PMIx 4.2).
const (
	Success                 Status = 0
	ErrGeneric              Status = -1
	ErrProcRestart          Status = -4
	ErrProcCheckpoint       Status = -5
	ErrProcMigrate          Status = -6
	ErrProcAborted          Status = -7
	ErrTimeout              Status = -24
	ErrUnreach              Status = -25
	ErrBadParam             Status = -27
	ErrNotFound             Status = -46
	ErrNotSupportedStatus   Status = -47
	ErrLostConnection       Status = -61
	JctrlCheckpoint         Status = -106
	JctrlCheckpointComplete Status = -107
	JctrlPreemptAlert       Status = -108
	OperationInProgress     Status = -156
	OperationSucceeded      Status = -157
	ErrProcTermWithoutSync  Status = -200
	EventActionComplete     Status = -334
)

// Error implements error with the library's own description when available.
func (s Status) Error() string {
	return fmt.Sprintf("pmix status %d (%s)", int32(s), statusString(s))
}

// Range is a pmix_data_range_t.
type Range uint8

// Data ranges.
const (
	RangeUndef Range = iota
	RangeRM
	RangeLocal
	RangeNamespace
	RangeSession
	RangeGlobal
	RangeCustom
	RangeProcLocal
)

// Rank is a pmix_rank_t.
type Rank uint32

// Special ranks.
const (
	RankUndef    Rank = math.MaxUint32
	RankWildcard Rank = math.MaxUint32 - 1
)

// Proc names one process (or, with RankWildcard, a whole namespace).
type Proc struct {
	Nspace string
	Rank   Rank
}

func (p Proc) String() string {
	if p.Rank == RankWildcard {
		return p.Nspace + ".*"
	}
	return fmt.Sprintf("%s.%d", p.Nspace, p.Rank)
}

// Info is one pmix_info_t. Value is one of: string, bool, int32, uint16, uint32,
// uint64, Rank, Status, []byte (byte object), []Info (a PMIX_DATA_ARRAY of infos),
// NodeRegex or ProcRegex. Values read back from the library use the same types;
// types torpor does not use are reported as their PMIx_Value_string rendering.
type Info struct {
	Key   string
	Value any
}

// NodeRegex is a comma-separated host list; it is turned into a PMIX_REGEX value
// with PMIx_generate_regex when the info is handed to the library. The result
// stays in C memory (it may be binary).
type NodeRegex string

// ProcRegex is a ppn list ("0,1;2,3": ranks per host, hosts separated by ';');
// it becomes a PMIX_REGEX value with PMIx_generate_ppn.
type ProcRegex string

// Lookup returns the value of the first info with the given key.
func Lookup(infos []Info, key string) (any, bool) {
	for _, in := range infos {
		if in.Key == key {
			return in.Value, true
		}
	}
	return nil, false
}

// Options configures PMIx_server_init.
type Options struct {
	// TmpDir is PMIX_SERVER_TMPDIR: the rendezvous files and the shared-memory
	// data store live here. Ranks must be able to read it, and a CRIU restore
	// must find it again at the same path. Required.
	TmpDir string
	// SystemTmpDir is PMIX_SYSTEM_TMPDIR; defaults to TmpDir.
	SystemTmpDir string
	// Nspace and Rank name the server itself (the source of the events it raises).
	Nspace string
	Rank   Rank
	// Hostname is PMIX_HOSTNAME for this server.
	Hostname string
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// FenceRequest is what the library hands the host when all local participants
// of a fence have arrived.
type FenceRequest struct {
	Procs []Proc // participants; {nspace, RankWildcard} means the whole namespace
	// Signature names the participant set canonically and Seq counts the
	// fences over that set in the order the library raised them (from 0): every
	// host sees the same fences over the same set in the same order, so
	// (Signature, Seq) identifies one fence across hosts.
	Signature string
	Seq       uint64
	Collect   bool   // PMIX_COLLECT_DATA: the result must carry every host's data
	Data      []byte // this host's contribution, copied; may be empty
	Info      []Info // the remaining directives
}

// Host is implemented by the program hosting the server (the PMIx "server module").
// Fence and DirectModex run on their own goroutine and may block until ctx ends;
// the other methods are called on the library's progress thread and must return
// quickly without waiting on anything the library does.
type Host interface {
	// Fence contributes req.Data and returns the concatenation, in any order,
	// of the data of every host that has participants in the fence.
	Fence(ctx context.Context, req FenceRequest) ([]byte, error)
	// DirectModex fetches the modex blob of a process hosted elsewhere.
	DirectModex(ctx context.Context, proc Proc, info []Info) ([]byte, error)
	// ClientConnected reports that a local client called PMIx_Init.
	ClientConnected(proc Proc)
	// ClientFinalized reports that a local client called PMIx_Finalize.
	ClientFinalized(proc Proc)
	// Abort reports PMIx_Abort from a local client; procs nil means the whole namespace.
	Abort(proc Proc, status int, msg string, procs []Proc)
	// Notify reports an event raised by a local client towards the host (the
	// notify_event upcall).
	Notify(ev Event)
}

// Event is a notification delivered to the host or to a registered handler.
type Event struct {
	Code   Status
	Source Proc
	Range  Range
	Info   []Info
}

// EventHandler is called on its own goroutine for each delivered event.
type EventHandler func(Event)

// Signature returns the canonical name of a participant set: "ns:*" for a
// whole namespace, "ns:r" for a rank, sorted and joined with ",".
func Signature(procs []Proc) string {
	parts := make([]string, len(procs))
	for i, p := range procs {
		if p.Rank == RankWildcard {
			parts[i] = p.Nspace + ":*"
		} else {
			parts[i] = p.Nspace + ":" + strconv.FormatUint(uint64(p.Rank), 10)
		}
	}
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), ",")
}

// ErrBadParamValue is wrapped when an Info carries a Go type libpmix cannot convert.
var ErrBadParamValue = errors.New("unsupported pmix info value")
