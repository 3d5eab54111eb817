//go:build cgo

// Info-list helpers: wrappers over PMIx_Info_list_* so Go never touches
// pmix_value_t unions. Values are deep-copied by the library.
#include <string.h>
#include "libpmix.h"

void *torpor_list_start(void) { return PMIx_Info_list_start(); }

pmix_status_t torpor_list_add_string(void *l, const char *key, const char *v)
{
	return PMIx_Info_list_add(l, key, v, PMIX_STRING);
}

pmix_status_t torpor_list_add_bool(void *l, const char *key, int v)
{
	bool b = v != 0;
	return PMIx_Info_list_add(l, key, &b, PMIX_BOOL);
}

pmix_status_t torpor_list_add_u16(void *l, const char *key, uint16_t v)
{
	return PMIx_Info_list_add(l, key, &v, PMIX_UINT16);
}

pmix_status_t torpor_list_add_u32(void *l, const char *key, uint32_t v)
{
	return PMIx_Info_list_add(l, key, &v, PMIX_UINT32);
}

pmix_status_t torpor_list_add_u64(void *l, const char *key, uint64_t v)
{
	return PMIx_Info_list_add(l, key, &v, PMIX_UINT64);
}

pmix_status_t torpor_list_add_i32(void *l, const char *key, int32_t v)
{
	return PMIx_Info_list_add(l, key, &v, PMIX_INT32);
}

pmix_status_t torpor_list_add_rank(void *l, const char *key, uint32_t v)
{
	pmix_rank_t r = v;
	return PMIx_Info_list_add(l, key, &r, PMIX_PROC_RANK);
}

pmix_status_t torpor_list_add_status(void *l, const char *key, int32_t v)
{
	pmix_status_t s = v;
	return PMIx_Info_list_add(l, key, &s, PMIX_STATUS);
}

pmix_status_t torpor_list_add_bytes(void *l, const char *key, const char *v, size_t n)
{
	pmix_byte_object_t bo;
	bo.bytes = (char *)v;
	bo.size = n;
	return PMIx_Info_list_add(l, key, &bo, PMIX_BYTE_OBJECT);
}

// The regex may be a binary blob: it never leaves C memory.
pmix_status_t torpor_list_add_regex(void *l, const char *key, const char *input, int ppn)
{
	char *regex = NULL;
	pmix_status_t st = ppn ? PMIx_generate_ppn(input, &regex) : PMIx_generate_regex(input, &regex);
	if (st != PMIX_SUCCESS)
		return st;
	st = PMIx_Info_list_add(l, key, regex, PMIX_REGEX);
	free(regex);
	return st;
}

pmix_status_t torpor_list_add_list(void *l, const char *key, void *sub)
{
	pmix_data_array_t da;
	pmix_status_t st = PMIx_Info_list_convert(sub, &da);
	PMIx_Info_list_release(sub);
	if (st != PMIX_SUCCESS)
		return st;
	st = PMIx_Info_list_add(l, key, &da, PMIX_DATA_ARRAY);
	PMIx_Data_array_destruct(&da);
	return st;
}

pmix_data_array_t *torpor_list_finish(void *l, pmix_status_t *st)
{
	pmix_data_array_t *da = calloc(1, sizeof(*da));
	*st = PMIx_Info_list_convert(l, da);
	PMIx_Info_list_release(l);
	if (*st != PMIX_SUCCESS) {
		free(da);
		return NULL;
	}
	return da;
}

void torpor_list_release(void *l) { PMIx_Info_list_release(l); }

void torpor_array_free(pmix_data_array_t *a)
{
	if (a == NULL)
		return;
	PMIx_Data_array_destruct(a);
	free(a);
}

pmix_info_t *torpor_info_at(pmix_info_t *info, size_t i) { return &info[i]; }
pmix_proc_t *torpor_proc_at(pmix_proc_t *procs, size_t i) { return &procs[i]; }
