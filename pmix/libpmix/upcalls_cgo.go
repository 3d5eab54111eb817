//go:build cgo

package libpmix

/*
#include "libpmix.h"
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// The functions below are called by the C trampolines on the library's
// progress thread. They copy their arguments and never wait.

//export goClientConnected
func goClientConnected(p *C.pmix_proc_t) {
	if s := current(); s != nil {
		s.host.ClientConnected(goProc(p))
	}
}

//export goClientFinalized
func goClientFinalized(p *C.pmix_proc_t) {
	if s := current(); s != nil {
		s.host.ClientFinalized(goProc(p))
	}
}

//export goAbort
func goAbort(p *C.pmix_proc_t, status C.int, msg *C.char, procs *C.pmix_proc_t, nprocs C.size_t) {
	s := current()
	if s == nil {
		return
	}
	m := ""
	if msg != nil {
		m = C.GoString(msg)
	}
	s.host.Abort(goProc(p), int(status), m, goProcs(procs, nprocs))
}

//export goFence
func goFence(procs *C.pmix_proc_t, nprocs C.size_t, info *C.pmix_info_t, ninfo C.size_t,
	data *C.char, ndata C.size_t, cbfunc C.pmix_modex_cbfunc_t, cbdata unsafe.Pointer) C.pmix_status_t {
	s := current()
	if s == nil {
		return C.pmix_status_t(ErrGeneric)
	}
	req := FenceRequest{Procs: goProcs(procs, nprocs)}
	// Numbered here, on the progress thread, so the order is the library's.
	req.Signature = Signature(req.Procs)
	s.mu.Lock()
	req.Seq = s.fenceSeq[req.Signature]
	s.fenceSeq[req.Signature]++
	s.mu.Unlock()
	for _, in := range fromC(info, ninfo) {
		if in.Key == KeyCollectData {
			b, _ := in.Value.(bool)
			req.Collect = b
			continue
		}
		req.Info = append(req.Info, in)
	}
	if data != nil && ndata > 0 {
		req.Data = C.GoBytes(unsafe.Pointer(data), C.int(ndata))
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		out, err := s.host.Fence(s.ctx, req)
		if err != nil {
			s.log.Error("fence failed", "procs", len(req.Procs), "err", err)
		}
		s.completeModex(cbfunc, cbdata, statusOf(err), out)
	}()
	return C.PMIX_SUCCESS
}

//export goDirectModex
func goDirectModex(p *C.pmix_proc_t, info *C.pmix_info_t, ninfo C.size_t,
	cbfunc C.pmix_modex_cbfunc_t, cbdata unsafe.Pointer) C.pmix_status_t {
	s := current()
	if s == nil {
		return C.pmix_status_t(ErrGeneric)
	}
	proc := goProc(p)
	infos := fromC(info, ninfo)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		out, err := s.host.DirectModex(s.ctx, proc, infos)
		if err != nil {
			s.log.Error("direct modex failed", "proc", proc.String(), "err", err)
		}
		s.completeModex(cbfunc, cbdata, statusOf(err), out)
	}()
	return C.PMIX_SUCCESS
}

func (s *Server) completeModex(cbfunc C.pmix_modex_cbfunc_t, cbdata unsafe.Pointer, st Status, out []byte) {
	var buf unsafe.Pointer
	if st == Success && len(out) > 0 {
		buf = C.CBytes(out) // freed by the library's release callback
	} else {
		out = nil
	}
	C.torpor_call_modex(cbfunc, C.pmix_status_t(st), (*C.char)(buf), C.size_t(len(out)), cbdata)
}

//export goNotifyEvent
func goNotifyEvent(code C.pmix_status_t, source *C.pmix_proc_t, rng C.pmix_data_range_t,
	info *C.pmix_info_t, ninfo C.size_t) {
	s := current()
	if s == nil {
		return
	}
	ev := Event{Code: Status(code), Range: Range(rng), Info: fromC(info, ninfo)}
	if source != nil {
		ev.Source = goProc(source)
	}
	s.host.Notify(ev)
}

//export goOpDone
func goOpDone(h C.uintptr_t, st C.pmix_status_t) {
	hd := cgo.Handle(h)
	ch := hd.Value().(chan Status)
	hd.Delete()
	ch <- Status(st)
}

//export goEvRegDone
func goEvRegDone(h C.uintptr_t, st C.pmix_status_t, ref C.size_t) {
	hd := cgo.Handle(h)
	reg := hd.Value().(*evReg)
	hd.Delete()
	reg.ch <- evRegResult{st: Status(st), ref: uint64(ref)}
}

//export goDmodexDone
func goDmodexDone(h C.uintptr_t, st C.pmix_status_t, data *C.char, sz C.size_t) {
	hd := cgo.Handle(h)
	ch := hd.Value().(chan dmodexResult)
	hd.Delete()
	r := dmodexResult{st: Status(st)}
	if data != nil && sz > 0 {
		r.data = C.GoBytes(unsafe.Pointer(data), C.int(sz))
	}
	ch <- r
}

//export goEvent
func goEvent(id C.size_t, code C.pmix_status_t, source *C.pmix_proc_t, info *C.pmix_info_t, ninfo C.size_t) {
	s := current()
	if s == nil {
		return
	}
	ev := Event{Code: Status(code), Info: fromC(info, ninfo)}
	if source != nil {
		ev.Source = goProc(source)
	}
	s.mu.Lock()
	fn := s.handlers[uint64(id)]
	if fn == nil {
		s.early[uint64(id)] = append(s.early[uint64(id)], ev)
	}
	s.mu.Unlock()
	if fn != nil {
		go fn(ev)
	}
}
