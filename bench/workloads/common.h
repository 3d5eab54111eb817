/*
 * common.h — helpers shared by the torpor test workloads (ring, stencil).
 *
 * Everything that feeds a checksum is integer arithmetic on uint64_t, so results
 * do not depend on timing, on the MPI library, on reduction order, or on where the
 * ranks run. Only rank 0 writes to stdout, one line at a time, flushed at once.
 */
#ifndef TORPOR_WORKLOADS_COMMON_H
#define TORPOR_WORKLOADS_COMMON_H

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

/* Exit status for bad command-line arguments. */
#define EXIT_USAGE 2

#define GOLDEN64 UINT64_C(0x9e3779b97f4a7c15)

/* mix64 is the splitmix64 finalizer: a bijection on 64-bit words with good avalanche. */
static inline uint64_t mix64(uint64_t x)
{
	x += GOLDEN64;
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
	return (x << (r & 63)) | (x >> ((64 - r) & 63));
}

/*
 * parse_u64 parses a whole decimal argument into *out, refusing empty strings,
 * signs, trailing garbage and values above max. It returns 0 on success.
 */
static inline int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end = NULL;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v > max)
		return -1;
	*out = (uint64_t)v;
	return 0;
}

/* say prints one line on rank 0 (the caller checks the rank) and flushes it. */
static inline void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* sleep_us sleeps for us microseconds, resuming after signals (e.g. around a restore). */
static inline void sleep_us(uint64_t us)
{
	struct timespec req, rem;

	if (us == 0)
		return;
	req.tv_sec = (time_t)(us / 1000000);
	req.tv_nsec = (long)((us % 1000000) * 1000);
	while (nanosleep(&req, &rem) != 0 && errno == EINTR)
		req = rem;
}

#define HOST_LEN 64

/*
 * print_hosts gathers "host pid" of every rank on rank 0 of comm and prints them
 * in rank order as "<prog>: rank=R host=H pid=P". Collective.
 */
static inline void print_hosts(const char *prog, MPI_Comm comm)
{
	char mine[HOST_LEN];
	char *all = NULL;
	int rank, size, i;
	long pid = (long)getpid();

	MPI_Comm_rank(comm, &rank);
	MPI_Comm_size(comm, &size);
	memset(mine, 0, sizeof(mine));
	if (gethostname(mine, sizeof(mine) - 1) != 0)
		snprintf(mine, sizeof(mine), "unknown");
	/* Append the pid after the NUL-terminated host name, in the same fixed record. */
	{
		size_t hl = strnlen(mine, HOST_LEN - 24);
		mine[hl] = '\0';
		snprintf(mine + hl + 1, HOST_LEN - hl - 1, "%ld", pid);
	}
	if (rank == 0) {
		all = malloc((size_t)size * HOST_LEN);
		if (all == NULL) {
			fprintf(stderr, "%s: out of memory gathering host names\n", prog);
			MPI_Abort(comm, 1);
		}
	}
	MPI_Gather(mine, HOST_LEN, MPI_CHAR, all, HOST_LEN, MPI_CHAR, 0, comm);
	if (rank == 0) {
		for (i = 0; i < size; i++) {
			const char *h = all + (size_t)i * HOST_LEN;
			const char *p = h + strlen(h) + 1;
			say("%s: rank=%d host=%s pid=%s", prog, i, h, p);
		}
		free(all);
	}
}

#endif /* TORPOR_WORKLOADS_COMMON_H */
