//go:build cgo

package libpmix

/*
#include "libpmix.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// toCList converts infos into a fresh PMIx info list.
func toCList(infos []Info) (unsafe.Pointer, error) {
	l := C.torpor_list_start()
	for _, in := range infos {
		if err := addInfo(l, in); err != nil {
			C.torpor_list_release(l)
			return nil, fmt.Errorf("add info %q: %w", in.Key, err)
		}
	}
	return l, nil
}

// toCArray converts infos to a C-allocated array (nil for no infos); free it
// with C.torpor_array_free or hand it to an op that frees it.
func toCArray(infos []Info) (*C.pmix_data_array_t, error) {
	if len(infos) == 0 {
		return nil, nil
	}
	l, err := toCList(infos)
	if err != nil {
		return nil, err
	}
	var st C.pmix_status_t
	a := C.torpor_list_finish(l, &st)
	if st != C.PMIX_SUCCESS {
		return nil, fmt.Errorf("convert info list: %w", Status(st))
	}
	return a, nil
}

func addInfo(l unsafe.Pointer, in Info) error {
	key := C.CString(in.Key)
	defer C.free(unsafe.Pointer(key))
	var st C.pmix_status_t
	switch v := in.Value.(type) {
	case string:
		cs := C.CString(v)
		st = C.torpor_list_add_string(l, key, cs)
		C.free(unsafe.Pointer(cs))
	case bool:
		b := C.int(0)
		if v {
			b = 1
		}
		st = C.torpor_list_add_bool(l, key, b)
	case uint16:
		st = C.torpor_list_add_u16(l, key, C.uint16_t(v))
	case uint32:
		st = C.torpor_list_add_u32(l, key, C.uint32_t(v))
	case uint64:
		st = C.torpor_list_add_u64(l, key, C.uint64_t(v))
	case int32:
		st = C.torpor_list_add_i32(l, key, C.int32_t(v))
	case Rank:
		st = C.torpor_list_add_rank(l, key, C.uint32_t(v))
	case Status:
		st = C.torpor_list_add_status(l, key, C.int32_t(v))
	case []byte:
		var p unsafe.Pointer
		if len(v) > 0 {
			p = C.CBytes(v)
			defer C.free(p)
		}
		st = C.torpor_list_add_bytes(l, key, (*C.char)(p), C.size_t(len(v)))
	case NodeRegex:
		cs := C.CString(string(v))
		st = C.torpor_list_add_regex(l, key, cs, 0)
		C.free(unsafe.Pointer(cs))
	case ProcRegex:
		cs := C.CString(string(v))
		st = C.torpor_list_add_regex(l, key, cs, 1)
		C.free(unsafe.Pointer(cs))
	case []Info:
		sub, err := toCList(v)
		if err != nil {
			return err
		}
		st = C.torpor_list_add_list(l, key, sub)
	default:
		return fmt.Errorf("%w: unsupported value type %T", ErrBadParamValue, in.Value)
	}
	if st != C.PMIX_SUCCESS {
		return Status(st)
	}
	return nil
}

// fromC copies a C info array into Go values.
func fromC(info *C.pmix_info_t, n C.size_t) []Info {
	if info == nil || n == 0 {
		return nil
	}
	out := make([]Info, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		in := C.torpor_info_at(info, i)
		out = append(out, Info{Key: C.GoString(&in.key[0]), Value: fromValue(&in.value)})
	}
	return out
}

func fromValue(v *C.pmix_value_t) any {
	d := unsafe.Pointer(&v.data)
	switch v._type {
	case C.PMIX_STRING:
		return C.GoString(*(**C.char)(d))
	case C.PMIX_BOOL:
		return *(*C.bool)(d) == true
	case C.PMIX_UINT16:
		return uint16(*(*C.uint16_t)(d))
	case C.PMIX_UINT32:
		return uint32(*(*C.uint32_t)(d))
	case C.PMIX_UINT64:
		return uint64(*(*C.uint64_t)(d))
	case C.PMIX_INT32, C.PMIX_INT:
		return int32(*(*C.int32_t)(d))
	case C.PMIX_PROC_RANK:
		return Rank(*(*C.pmix_rank_t)(d))
	case C.PMIX_STATUS:
		return Status(*(*C.pmix_status_t)(d))
	case C.PMIX_BYTE_OBJECT:
		bo := (*C.pmix_byte_object_t)(d)
		return C.GoBytes(unsafe.Pointer(bo.bytes), C.int(bo.size))
	case C.PMIX_PROC:
		p := *(**C.pmix_proc_t)(d)
		if p == nil {
			return Proc{}
		}
		return goProc(p)
	default:
		s := C.PMIx_Value_string(v)
		if s == nil {
			return nil
		}
		defer C.free(unsafe.Pointer(s))
		return C.GoString(s)
	}
}

func goProc(p *C.pmix_proc_t) Proc {
	return Proc{Nspace: C.GoString(&p.nspace[0]), Rank: Rank(p.rank)}
}

func goProcs(p *C.pmix_proc_t, n C.size_t) []Proc {
	if p == nil || n == 0 {
		return nil
	}
	out := make([]Proc, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		out = append(out, goProc(C.torpor_proc_at(p, i)))
	}
	return out
}

func statusString(s Status) string {
	return C.GoString(C.PMIx_Error_string(C.pmix_status_t(s)))
}

// Version is the library's version string.
func Version() string {
	return C.GoString(C.PMIx_Get_version())
}

// Available reports whether this build can host a PMIx server.
func Available() bool { return true }
