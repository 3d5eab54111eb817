//go:build cgo

// Trampolines with the exact pmix_server_module_t signatures; they forward to
// the //export'ed Go functions in upcalls.go.
#include <string.h>
#include <unistd.h>
#include "libpmix.h"
#include "_cgo_export.h"

static pmix_status_t t_client_connected(const pmix_proc_t *proc, void *obj,
					pmix_op_cbfunc_t cbfunc, void *cbdata)
{
	(void)obj; (void)cbfunc; (void)cbdata;
	goClientConnected((pmix_proc_t *)proc);
	return PMIX_OPERATION_SUCCEEDED;
}

static pmix_status_t t_client_finalized(const pmix_proc_t *proc, void *obj,
					pmix_op_cbfunc_t cbfunc, void *cbdata)
{
	(void)obj; (void)cbfunc; (void)cbdata;
	goClientFinalized((pmix_proc_t *)proc);
	return PMIX_OPERATION_SUCCEEDED;
}

static pmix_status_t t_abort(const pmix_proc_t *proc, void *obj, int status, const char msg[],
			     pmix_proc_t procs[], size_t nprocs, pmix_op_cbfunc_t cbfunc, void *cbdata)
{
	(void)obj; (void)cbfunc; (void)cbdata;
	goAbort((pmix_proc_t *)proc, status, (char *)msg, procs, nprocs);
	return PMIX_OPERATION_SUCCEEDED;
}

static pmix_status_t t_fence_nb(const pmix_proc_t procs[], size_t nprocs,
				const pmix_info_t info[], size_t ninfo, char *data, size_t ndata,
				pmix_modex_cbfunc_t cbfunc, void *cbdata)
{
	return goFence((pmix_proc_t *)procs, nprocs, (pmix_info_t *)info, ninfo, data, ndata,
		       cbfunc, cbdata);
}

static pmix_status_t t_direct_modex(const pmix_proc_t *proc, const pmix_info_t info[], size_t ninfo,
				    pmix_modex_cbfunc_t cbfunc, void *cbdata)
{
	return goDirectModex((pmix_proc_t *)proc, (pmix_info_t *)info, ninfo, cbfunc, cbdata);
}

static pmix_status_t t_notify_event(pmix_status_t code, const pmix_proc_t *source,
				    pmix_data_range_t range, pmix_info_t info[], size_t ninfo,
				    pmix_op_cbfunc_t cbfunc, void *cbdata)
{
	(void)cbfunc; (void)cbdata;
	// Returning SUCCEEDED: calling cbfunc inline deadlocks, and PMIX_SUCCESS
	// would let the library free state a later callback uses.
	goNotifyEvent(code, (pmix_proc_t *)source, range, info, ninfo);
	return PMIX_OPERATION_SUCCEEDED;
}

// The module with zeroed room after it. libpmix.so.2 is the soname of PMIx
// 4.2 and 5.x alike, and PMIx_server_init copies the module whole
// (pmix_host_server = *module) at the size of the library's own
// pmix_server_module_t: 5.0 appended session_control, so a 5.x library run
// under this binary built against 4.2's headers reads past the 4.2 struct.
// The spare pointers read as NULL: "not supported". Every other type and
// every function this package uses is the same in 4.2.2 and 5.0.7.
static struct {
	pmix_server_module_t m;
	void *spare[16];
} module = {
	.m = {
		.client_connected = t_client_connected,
		.client_finalized = t_client_finalized,
		.abort = t_abort,
		.fence_nb = t_fence_nb,
		.direct_modex = t_direct_modex,
		.notify_event = t_notify_event,
	},
};

pmix_status_t torpor_server_init(pmix_data_array_t *info)
{
	return PMIx_server_init(&module.m, (pmix_info_t *)info->array, info->size);
}

torpor_op_t *torpor_op_new(uintptr_t handle, pmix_data_array_t *info)
{
	torpor_op_t *op = calloc(1, sizeof(*op));
	op->handle = handle;
	op->info = info;
	return op;
}

static void op_done(pmix_status_t st, void *cbdata)
{
	torpor_op_t *op = cbdata;
	uintptr_t h = op->handle;
	torpor_array_free(op->info);
	free(op);
	goOpDone(h, st);
}

static void set_proc(pmix_proc_t *p, const char *nspace, uint32_t rank)
{
	memset(p, 0, sizeof(*p));
	strncpy(p->nspace, nspace, PMIX_MAX_NSLEN);
	p->rank = rank;
}

static pmix_info_t *info_of(torpor_op_t *op, size_t *n)
{
	if (op->info == NULL) {
		*n = 0;
		return NULL;
	}
	*n = op->info->size;
	return op->info->array;
}

pmix_status_t torpor_register_nspace(const char *nspace, int nlocal, torpor_op_t *op)
{
	pmix_nspace_t ns;
	size_t n;
	pmix_info_t *info = info_of(op, &n);
	memset(ns, 0, sizeof(ns));
	strncpy(ns, nspace, PMIX_MAX_NSLEN);
	return PMIx_server_register_nspace(ns, nlocal, info, n, op_done, op);
}

void torpor_deregister_nspace(const char *nspace, torpor_op_t *op)
{
	pmix_nspace_t ns;
	memset(ns, 0, sizeof(ns));
	strncpy(ns, nspace, PMIX_MAX_NSLEN);
	PMIx_server_deregister_nspace(ns, op_done, op);
}

pmix_status_t torpor_register_client(const char *nspace, uint32_t rank, torpor_op_t *op)
{
	pmix_proc_t p;
	set_proc(&p, nspace, rank);
	return PMIx_server_register_client(&p, getuid(), getgid(), NULL, op_done, op);
}

pmix_status_t torpor_setup_fork(const char *nspace, uint32_t rank, char ***env)
{
	pmix_proc_t p;
	set_proc(&p, nspace, rank);
	return PMIx_server_setup_fork(&p, env);
}

void torpor_free_argv(char **argv)
{
	if (argv == NULL)
		return;
	for (char **a = argv; *a != NULL; a++)
		free(*a);
	free(argv);
}

pmix_status_t torpor_notify(pmix_status_t code, const char *nspace, uint32_t rank,
			    pmix_data_range_t range, torpor_op_t *op)
{
	pmix_proc_t p;
	size_t n;
	pmix_info_t *info = info_of(op, &n);
	set_proc(&p, nspace, rank);
	return PMIx_Notify_event(code, &p, range, info, n, op_done, op);
}

static void event_fn(size_t id, pmix_status_t status, const pmix_proc_t *source,
		     pmix_info_t info[], size_t ninfo, pmix_info_t *results, size_t nresults,
		     pmix_event_notification_cbfunc_fn_t cbfunc, void *cbdata)
{
	(void)results; (void)nresults;
	goEvent(id, status, (pmix_proc_t *)source, info, ninfo);
	if (cbfunc != NULL)
		cbfunc(PMIX_SUCCESS, NULL, 0, NULL, NULL, cbdata);
}

static void evreg_done(pmix_status_t st, size_t ref, void *cbdata)
{
	torpor_op_t *op = cbdata;
	uintptr_t h = op->handle;
	torpor_array_free(op->info);
	free(op);
	goEvRegDone(h, st, ref);
}

pmix_status_t torpor_register_handler(pmix_status_t *codes, size_t ncodes, torpor_op_t *op)
{
	size_t n;
	pmix_info_t *info = info_of(op, &n);
	return PMIx_Register_event_handler(codes, ncodes, info, n, event_fn, evreg_done, op);
}

pmix_status_t torpor_deregister_handler(size_t ref, torpor_op_t *op)
{
	return PMIx_Deregister_event_handler(ref, op_done, op);
}

static void dmodex_done(pmix_status_t st, char *data, size_t sz, void *cbdata)
{
	uintptr_t *cell = cbdata;
	uintptr_t h = *cell;
	free(cell);
	goDmodexDone(h, st, data, sz);
}

pmix_status_t torpor_dmodex_request(const char *nspace, uint32_t rank, uintptr_t handle)
{
	pmix_proc_t p;
	uintptr_t *cell = malloc(sizeof(*cell));
	pmix_status_t st;
	*cell = handle;
	set_proc(&p, nspace, rank);
	st = PMIx_server_dmodex_request(&p, dmodex_done, cell);
	if (st != PMIX_SUCCESS)
		free(cell);
	return st;
}

void torpor_call_op(pmix_op_cbfunc_t fn, pmix_status_t st, void *cbdata)
{
	if (fn != NULL)
		fn(st, cbdata);
}

static void release_buf(void *cbdata)
{
	free(cbdata);
}

void torpor_call_modex(pmix_modex_cbfunc_t fn, pmix_status_t st, char *data, size_t n, void *cbdata)
{
	if (fn == NULL) {
		free(data);
		return;
	}
	// data is malloc'd by Go (C.CBytes) and stays alive until the release callback.
	fn(st, data, n, cbdata, data ? release_buf : NULL, data);
}
