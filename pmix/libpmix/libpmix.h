// C helpers for package libpmix. Go cannot call C function pointers or use
// the PMIx macros, so these small functions do it on Go's behalf.
#ifndef TORPOR_LIBPMIX_H
#define TORPOR_LIBPMIX_H

#include <stdint.h>
#include <stdlib.h>
#include <pmix_server.h>
#include <pmix.h>

// An in-flight operation: the cgo.Handle of the Go waiter and any info array
// that must outlive the call (freed by the completion callback).
typedef struct {
	uintptr_t handle;
	pmix_data_array_t *info;
} torpor_op_t;

torpor_op_t *torpor_op_new(uintptr_t handle, pmix_data_array_t *info);

// Server lifecycle and calls that complete through torpor_op_t.
pmix_status_t torpor_server_init(pmix_data_array_t *info);
pmix_status_t torpor_register_nspace(const char *nspace, int nlocal, torpor_op_t *op);
void torpor_deregister_nspace(const char *nspace, torpor_op_t *op);
pmix_status_t torpor_register_client(const char *nspace, uint32_t rank, torpor_op_t *op);
pmix_status_t torpor_setup_fork(const char *nspace, uint32_t rank, char ***env);
void torpor_free_argv(char **argv);
pmix_status_t torpor_notify(pmix_status_t code, const char *nspace, uint32_t rank,
			    pmix_data_range_t range, torpor_op_t *op);
pmix_status_t torpor_register_handler(pmix_status_t *codes, size_t ncodes, torpor_op_t *op);
pmix_status_t torpor_deregister_handler(size_t ref, torpor_op_t *op);
pmix_status_t torpor_dmodex_request(const char *nspace, uint32_t rank, uintptr_t handle);

// Calling library callbacks from Go.
void torpor_call_op(pmix_op_cbfunc_t fn, pmix_status_t st, void *cbdata);
void torpor_call_modex(pmix_modex_cbfunc_t fn, pmix_status_t st, char *data, size_t n, void *cbdata);

// Info lists (PMIx_Info_list_*), built from Go one value at a time.
void *torpor_list_start(void);
pmix_status_t torpor_list_add_string(void *l, const char *key, const char *v);
pmix_status_t torpor_list_add_bool(void *l, const char *key, int v);
pmix_status_t torpor_list_add_u16(void *l, const char *key, uint16_t v);
pmix_status_t torpor_list_add_u32(void *l, const char *key, uint32_t v);
pmix_status_t torpor_list_add_u64(void *l, const char *key, uint64_t v);
pmix_status_t torpor_list_add_i32(void *l, const char *key, int32_t v);
pmix_status_t torpor_list_add_rank(void *l, const char *key, uint32_t v);
pmix_status_t torpor_list_add_status(void *l, const char *key, int32_t v);
pmix_status_t torpor_list_add_bytes(void *l, const char *key, const char *v, size_t n);
pmix_status_t torpor_list_add_regex(void *l, const char *key, const char *input, int ppn);
pmix_status_t torpor_list_add_list(void *l, const char *key, void *sub);
pmix_data_array_t *torpor_list_finish(void *l, pmix_status_t *st);
void torpor_list_release(void *l);
void torpor_array_free(pmix_data_array_t *a);

// Reading info arrays handed to upcalls.
pmix_info_t *torpor_info_at(pmix_info_t *info, size_t i);
pmix_proc_t *torpor_proc_at(pmix_proc_t *procs, size_t i);

#endif
