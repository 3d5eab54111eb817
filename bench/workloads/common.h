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
#include <getopt.h>
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

/* num_opt is a command-line option taking a whole number: -flag N stores N in *dst. */
struct num_opt {
	char flag;
	uint64_t *dst;
	uint64_t min, max;
	const char *what; /* named in the error for a bad value */
};

/* run_opts are the options every workload takes: -i, -s, -p and -v. */
struct run_opts {
	uint64_t iters;
	uint64_t sleep_us;
	uint64_t print_every;
	int verbose;
};

/* Help lines for the run_opts, and for the output every workload prints. */
#define USAGE_ITERS "  -i N    iterations (default 1000, >= 1)\n"
#define USAGE_RUN                                                                                          \
	"  -s us   sleep per iteration in microseconds (default 0)\n"                                         \
	"  -p K    rank 0 prints the checksum every K iterations (default 100, 0 = only at the end)\n"       \
	"  -v      print each rank's host name and pid at start\n"                                            \
	"  -h      this help\n"
#define USAGE_OUTPUT(prog)                                                                                 \
	"output (rank 0): '" prog ": start ...', '" prog ": iter=N checksum=0x...',\n"                       \
	"                 '" prog ": done iters=N ranks=R checksum=0x...'\n"

#define MAX_NUM_OPTS 16

/*
 * parse_opts sets run to its defaults and parses argv with getopt: the program's own
 * options in own[0..nown), the run_opts, and -h. Only rank 0 prints; usage is prog's
 * help text. It returns -1 to go on, or the exit status to finish with.
 */
static inline int parse_opts(int argc, char **argv, int rank, const char *prog, const char *usage,
			     struct run_opts *run, const struct num_opt *own, size_t nown)
{
	struct num_opt opts[MAX_NUM_OPTS];
	char optstring[2 * MAX_NUM_OPTS + 4];
	const struct num_opt *o;
	size_t nopts = 0, n = 0, k;
	int c;

	run->iters = 1000;
	run->sleep_us = 0;
	run->print_every = 100;
	run->verbose = 0;

	if (nown + 3 > MAX_NUM_OPTS) {
		fprintf(stderr, "%s: too many options\n", prog);
		return EXIT_USAGE;
	}
	for (k = 0; k < nown; k++)
		opts[nopts++] = own[k];
	opts[nopts++] = (struct num_opt){'i', &run->iters, 1, UINT64_C(1) << 40, "iterations"};
	opts[nopts++] = (struct num_opt){'s', &run->sleep_us, 0, UINT64_C(3600000000), "sleep microseconds"};
	opts[nopts++] = (struct num_opt){'p', &run->print_every, 0, UINT64_C(1) << 40, "print interval"};

	optstring[n++] = ':';
	for (k = 0; k < nopts; k++) {
		optstring[n++] = opts[k].flag;
		optstring[n++] = ':';
	}
	optstring[n++] = 'v';
	optstring[n++] = 'h';
	optstring[n] = '\0';

	opterr = 0;
	while ((c = getopt(argc, argv, optstring)) != -1) {
		switch (c) {
		case 'v': run->verbose = 1; continue;
		case 'h':
			if (rank == 0)
				fputs(usage, stdout);
			return 0;
		case ':':
			if (rank == 0) {
				fprintf(stderr, "%s: option -%c needs a value\n", prog, optopt);
				fputs(usage, stderr);
			}
			return EXIT_USAGE;
		}
		for (o = NULL, k = 0; k < nopts; k++)
			if (opts[k].flag == c)
				o = &opts[k];
		if (o == NULL) {
			if (rank == 0) {
				fprintf(stderr, "%s: unknown option -%c\n", prog, optopt);
				fputs(usage, stderr);
			}
			return EXIT_USAGE;
		}
		if (parse_u64(optarg, o->max, o->dst) != 0 || *o->dst < o->min) {
			if (rank == 0)
				fprintf(stderr,
					"%s: bad %s '%s' for -%c: want a whole number from %" PRIu64
					" to %" PRIu64 "\n",
					prog, o->what, optarg, c, o->min, o->max);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		if (rank == 0) {
			fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
			fputs(usage, stderr);
		}
		return EXIT_USAGE;
	}
	return -1;
}

/*
 * begin initialises MPI, sets *rank and *size in MPI_COMM_WORLD and parses the
 * arguments with parse_opts. It returns -1 to go on, or, with MPI finalized, the
 * exit status to finish with.
 */
static inline int begin(int *argc, char ***argv, int *rank, int *size, const char *prog,
			const char *usage, struct run_opts *run, const struct num_opt *own, size_t nown)
{
	int st;

	MPI_Init(argc, argv);
	MPI_Comm_rank(MPI_COMM_WORLD, rank);
	MPI_Comm_size(MPI_COMM_WORLD, size);
	st = parse_opts(*argc, *argv, *rank, prog, usage, run, own, nown);
	if (st >= 0)
		MPI_Finalize();
	return st;
}

/*
 * end_iter closes iteration it of run, whose global value is global: rank 0 prints
 * the periodic checksum line, and the done line after the last iteration; every
 * rank then sleeps, except after the last.
 */
static inline void end_iter(const char *prog, const struct run_opts *run, int rank, int size, uint64_t it,
			    uint64_t global)
{
	if (rank == 0 && run->print_every != 0 && it % run->print_every == 0)
		say("%s: iter=%" PRIu64 " checksum=0x%016" PRIx64, prog, it, global);
	if (rank == 0 && it == run->iters)
		say("%s: done iters=%" PRIu64 " ranks=%d checksum=0x%016" PRIx64, prog, run->iters, size, global);
	if (it < run->iters)
		sleep_us(run->sleep_us);
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
