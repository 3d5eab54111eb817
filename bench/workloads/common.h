/*
 * common.h — helpers shared by the torpor test workloads (ring, stencil, appfiles,
 * mpiio).
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

#include <sys/stat.h>
#include <sys/types.h>

#include <mpi.h>

/* Exit status for bad command-line arguments. */
#define EXIT_USAGE 2

#define GOLDEN64 UINT64_C(0x9e3779b97f4a7c15)

/* Room for a path in an output directory (-d DIR). */
#define PATH_LEN 4096

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

/*
 * fail prints "<prog>: rank R: <message>" on stderr and aborts the job: for errors
 * that leave a rank unable to go on (no memory, a failed write).
 */
static inline void fail(const char *prog, int rank, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 3, 4)));
static inline void fail(const char *prog, int rank, const char *fmt, ...)
{
	char msg[PATH_LEN + 256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s: rank %d: %s\n", prog, rank, msg);
	fflush(stderr);
	MPI_Abort(MPI_COMM_WORLD, 1);
	exit(1); /* not reached */
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

/* run_opts are the options every workload takes: -i, -s, -p, and -v, -t or -d DIR. */
struct run_opts {
	uint64_t iters;
	uint64_t sleep_us;
	uint64_t print_every;
	int verbose;
	int timing;      /* -t: rank 0 prints wall-clock timestamps (see begin_run, close_iter) */
	uint64_t secs;   /* -T S: end at the first -p boundary S seconds after MPI_Init (see close_iter) */
	int64_t init_ns; /* when this rank's MPI_Init returned (CLOCK_REALTIME) */
	const char *dir; /* -d DIR, for the workloads that write files */
};

/*
 * run_spec says how a workload takes its run_opts: the default and the largest -i,
 * whether it takes -v, whether it needs -d DIR (an existing directory), and
 * whether it takes -t.
 */
struct run_spec {
	uint64_t iters;
	uint64_t max_iters;
	int verbose;
	int dir;
	int timing;
};

/* RUN_SPEC_DEFAULT is ring's and stencil's: -i up to 2^40, default 1000, -v, -t, no -d. */
#define RUN_SPEC_DEFAULT {1000, UINT64_C(1) << 40, 1, 0, 1}

/* Help lines for the run_opts, and for the output every workload prints. */
#define USAGE_ITERS_DEFAULT(n) "  -i N    iterations (default " n ", >= 1)\n"
#define USAGE_ITERS USAGE_ITERS_DEFAULT("1000")
#define USAGE_DIR(files) "  -d DIR  output directory (must exist); gets " files "\n"
#define USAGE_SLEEP "  -s us   sleep per iteration in microseconds (default 0)\n"
#define USAGE_PRINT "  -p K    rank 0 prints the checksum every K iterations (default 100, 0 = only at the end)\n"
#define USAGE_VERBOSE "  -v      print each rank's host name and pid at start\n"
#define USAGE_TIMING                                                                                       \
	"  -t      rank 0 prints CLOCK_REALTIME timestamps in ns: '<prog>: t main_ns=M init_ns=I' once\n" \
	"          (M: the earliest rank's entry into main, I: rank 0's MPI_Init returned) and\n"         \
	"          '<prog>: t iter=N ns=T' after each -p line (for benchmarks; no effect on the result)\n" \
	"  -T S    run S seconds: end at the first -p boundary S s after MPI_Init (-i is then the most)\n"
#define USAGE_HELP "  -h      this help\n"
#define USAGE_RUN USAGE_SLEEP USAGE_PRINT USAGE_VERBOSE USAGE_TIMING USAGE_HELP
#define USAGE_OUTPUT(prog)                                                                                 \
	"output (rank 0): '" prog ": start ...', '" prog ": iter=N checksum=0x...',\n"                       \
	"                 '" prog ": done iters=N ranks=R checksum=0x...'\n"

#define MAX_NUM_OPTS 16

/*
 * parse_run sets run to the defaults of spec and parses argv with getopt: the
 * program's own options in own[0..nown), the run_opts as spec takes them, and -h.
 * Only rank 0 prints; usage is prog's help text. It returns -1 to go on, or the
 * exit status to finish with.
 */
static inline int parse_run(int argc, char **argv, int rank, const char *prog, const char *usage,
			    const struct run_spec *spec, struct run_opts *run, const struct num_opt *own,
			    size_t nown)
{
	struct num_opt opts[MAX_NUM_OPTS];
	char optstring[2 * MAX_NUM_OPTS + 8];
	const struct num_opt *o;
	size_t nopts = 0, n = 0, k;
	int c;

	run->iters = spec->iters;
	run->sleep_us = 0;
	run->print_every = 100;
	run->verbose = 0;
	run->timing = 0;
	run->secs = 0;
	run->dir = NULL;

	if (nown + 4 > MAX_NUM_OPTS) {
		fprintf(stderr, "%s: too many options\n", prog);
		return EXIT_USAGE;
	}
	for (k = 0; k < nown; k++)
		opts[nopts++] = own[k];
	opts[nopts++] = (struct num_opt){'i', &run->iters, 1, spec->max_iters, "iterations"};
	opts[nopts++] = (struct num_opt){'s', &run->sleep_us, 0, UINT64_C(3600000000), "sleep microseconds"};
	opts[nopts++] = (struct num_opt){'p', &run->print_every, 0, UINT64_C(1) << 40, "print interval"};
	if (spec->timing)
		opts[nopts++] = (struct num_opt){'T', &run->secs, 1, UINT64_C(1) << 30, "seconds"};

	optstring[n++] = ':';
	for (k = 0; k < nopts; k++) {
		optstring[n++] = opts[k].flag;
		optstring[n++] = ':';
	}
	if (spec->dir) {
		optstring[n++] = 'd';
		optstring[n++] = ':';
	}
	if (spec->verbose)
		optstring[n++] = 'v';
	if (spec->timing)
		optstring[n++] = 't';
	optstring[n++] = 'h';
	optstring[n] = '\0';

	opterr = 0;
	while ((c = getopt(argc, argv, optstring)) != -1) {
		switch (c) {
		case 'd': run->dir = optarg; continue;
		case 'v': run->verbose = 1; continue;
		case 't': run->timing = 1; continue;
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
	if (spec->dir && (run->dir == NULL || run->dir[0] == '\0')) {
		if (rank == 0) {
			fprintf(stderr, "%s: missing output directory: give -d DIR\n", prog);
			fputs(usage, stderr);
		}
		return EXIT_USAGE;
	}
	return -1;
}

/* parse_opts is parse_run for the run_opts of ring and stencil (RUN_SPEC_DEFAULT). */
static inline int parse_opts(int argc, char **argv, int rank, const char *prog, const char *usage,
			     struct run_opts *run, const struct num_opt *own, size_t nown)
{
	const struct run_spec spec = RUN_SPEC_DEFAULT;

	return parse_run(argc, argv, rank, prog, usage, &spec, run, own, nown);
}

/* check_dir tells whether dir is an existing directory with room for our file names. */
static inline int check_dir(const char *prog, const char *dir, int rank)
{
	struct stat sb;

	if (strlen(dir) > PATH_LEN - 64) {
		fprintf(stderr, "%s: rank %d: output directory name too long\n", prog, rank);
		return -1;
	}
	if (stat(dir, &sb) != 0) {
		fprintf(stderr, "%s: rank %d: bad output directory '%s': %s\n", prog, rank, dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(sb.st_mode)) {
		fprintf(stderr, "%s: rank %d: bad output directory '%s': not a directory\n", prog, rank, dir);
		return -1;
	}
	return 0;
}

/* realtime_ns is CLOCK_REALTIME in nanoseconds: comparable with the launcher's clock. */
static inline int64_t realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
}

/*
 * begin_run initialises MPI, sets *rank and *size in MPI_COMM_WORLD and parses the
 * arguments with parse_run. Where spec needs -d DIR, every rank checks DIR (each
 * writes into it) and the run stops if any finds it bad. With -t, rank 0 prints
 * when the first rank entered begin_run (the top of main, before MPI_Init) and
 * when its own MPI_Init returned. It returns -1 to go on, or, with MPI finalized,
 * the exit status to finish with.
 */
static inline int begin_run(int *argc, char ***argv, int *rank, int *size, const char *prog,
			    const char *usage, const struct run_spec *spec, struct run_opts *run,
			    const struct num_opt *own, size_t nown)
{
	int st, bad, anybad;
	int64_t main_ns = realtime_ns(), init_ns, first_ns;

	MPI_Init(argc, argv);
	init_ns = realtime_ns();
	MPI_Comm_rank(MPI_COMM_WORLD, rank);
	MPI_Comm_size(MPI_COMM_WORLD, size);
	st = parse_run(*argc, *argv, *rank, prog, usage, spec, run, own, nown);
	run->init_ns = init_ns;
	if (st < 0 && run->secs != 0 && run->print_every == 0) {
		if (*rank == 0)
			fprintf(stderr, "%s: -T needs -p K > 0 (the run ends at a -p boundary)\n", prog);
		st = EXIT_USAGE;
	}
	if (st < 0 && run->timing) {
		MPI_Reduce(&main_ns, &first_ns, 1, MPI_INT64_T, MPI_MIN, 0, MPI_COMM_WORLD);
		if (*rank == 0)
			say("%s: t main_ns=%" PRId64 " init_ns=%" PRId64, prog, first_ns, init_ns);
	}
	if (st < 0 && spec->dir) {
		bad = check_dir(prog, run->dir, *rank) != 0;
		MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
		if (anybad)
			st = EXIT_USAGE;
	}
	if (st >= 0)
		MPI_Finalize();
	return st;
}

/* begin is begin_run for the run_opts of ring and stencil (RUN_SPEC_DEFAULT). */
static inline int begin(int *argc, char ***argv, int *rank, int *size, const char *prog,
			const char *usage, struct run_opts *run, const struct num_opt *own, size_t nown)
{
	const struct run_spec spec = RUN_SPEC_DEFAULT;

	return begin_run(argc, argv, rank, size, prog, usage, &spec, run, own, nown);
}

/*
 * close_iter closes iteration it of run, whose global value is global, but for the
 * done line: rank 0 prints the periodic checksum line; every rank then sleeps,
 * except after the last iteration. With -T S, at every -p boundary rank 0 tells
 * every rank (MPI_Bcast) whether S seconds have passed since its MPI_Init
 * returned; if so, it is the last iteration (run->iters becomes it). A workload
 * that must finish something (close its files) before it reports done calls
 * say_done itself afterwards.
 */
static inline void close_iter(const char *prog, struct run_opts *run, int rank, uint64_t it, uint64_t global)
{
	if (run->print_every != 0 && it % run->print_every == 0) {
		int64_t now = realtime_ns();

		if (rank == 0) {
			say("%s: iter=%" PRIu64 " checksum=0x%016" PRIx64, prog, it, global);
			if (run->timing)
				say("%s: t iter=%" PRIu64 " ns=%" PRId64, prog, it, now);
		}
		if (run->secs != 0) {
			int stop = now - run->init_ns >= (int64_t)run->secs * 1000000000;

			MPI_Bcast(&stop, 1, MPI_INT, 0, MPI_COMM_WORLD);
			if (stop)
				run->iters = it;
		}
	}
	if (it < run->iters)
		sleep_us(run->sleep_us);
}

/* say_done prints the done line on rank 0, with the last global value. */
static inline void say_done(const char *prog, const struct run_opts *run, int rank, int size, uint64_t global)
{
	if (rank == 0)
		say("%s: done iters=%" PRIu64 " ranks=%d checksum=0x%016" PRIx64, prog, run->iters, size, global);
}

/*
 * end_iter closes iteration it of run, whose global value is global: rank 0 prints
 * the periodic checksum line, and the done line after the last iteration; every
 * rank then sleeps, except after the last.
 */
static inline void end_iter(const char *prog, struct run_opts *run, int rank, int size, uint64_t it,
			    uint64_t global)
{
	close_iter(prog, run, rank, it, global);
	if (it == run->iters)
		say_done(prog, run, rank, size, global);
}

/*
 * The ring state step that ring, appfiles and mpiio share. Every rank keeps a
 * 64-bit state; an iteration folds in pages of its memory (touch_pages), a message
 * from its left neighbour (ring_exchange) and a global value (reduce_state).
 */
#define WORDS_PER_PAGE 512 /* 4096 bytes / 8 */

/*
 * alloc_pages allocates mib MiB of words filled from seed, or aborts the job; it
 * returns NULL for 0 MiB. *npages gets the number of 4 KiB pages.
 */
static inline uint64_t *alloc_pages(const char *prog, int rank, uint64_t mib, uint64_t seed, size_t *npages)
{
	size_t nwords = (size_t)mib * (1024 * 1024 / sizeof(uint64_t)), k;
	uint64_t *mem = NULL;

	if (nwords > 0) {
		mem = malloc(nwords * sizeof(uint64_t));
		if (mem == NULL)
			fail(prog, rank, "cannot allocate %" PRIu64 " MiB; use a smaller -m", mib);
	}
	for (k = 0; k < nwords; k++)
		mem[k] = mix64(seed + k);
	*npages = nwords / WORDS_PER_PAGE;
	return mem;
}

/*
 * touch_pages reads one word in every page of mem, folds it into state and rewrites
 * it (so every page is dirty at any checkpoint), rotating through the page over
 * iterations. It returns the new state.
 */
static inline uint64_t touch_pages(uint64_t *mem, size_t npages, uint64_t state, uint64_t it)
{
	uint64_t acc = it;
	size_t p, off = (size_t)((it * 37) % WORDS_PER_PAGE);

	for (p = 0; p < npages; p++) {
		uint64_t *w = &mem[p * WORDS_PER_PAGE + off];
		uint64_t v = *w;
		acc = rotl64(acc, 5) ^ v;
		*w = mix64(v ^ state ^ p);
	}
	return mix64(state ^ acc);
}

/*
 * ring_exchange sends nwords derived from state and salt to the right neighbour in
 * MPI_COMM_WORLD while it receives as many from the left one (MPI_Sendrecv), and
 * returns the state with them folded in.
 */
static inline uint64_t ring_exchange(uint64_t state, uint64_t salt, uint64_t *sbuf, uint64_t *rbuf, size_t nwords,
				     int rank, int size, int tag)
{
	int right = (rank + 1) % size, left = (rank + size - 1) % size;
	uint64_t acc = salt;
	size_t k;

	for (k = 0; k < nwords; k++)
		sbuf[k] = mix64(state + k * GOLDEN64 + salt);
	MPI_Sendrecv(sbuf, (int)nwords, MPI_UINT64_T, right, tag,
		     rbuf, (int)nwords, MPI_UINT64_T, left, tag,
		     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
	for (k = 0; k < nwords; k++)
		acc = rotl64(acc, 7) ^ rbuf[k];
	return mix64(state ^ rotl64(acc, 23));
}

/*
 * reduce_state sums two words of every rank's state over MPI_COMM_WORLD
 * (MPI_Allreduce; wrapping sums are exact and order independent), folds the result
 * into *state and returns it: the global value of iteration it.
 */
static inline uint64_t reduce_state(uint64_t *state, int rank, uint64_t it)
{
	uint64_t in[2], out[2], global;

	in[0] = *state;
	in[1] = mix64(*state ^ (uint64_t)rank);
	MPI_Allreduce(in, out, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
	global = mix64(out[0] ^ rotl64(out[1], 31) ^ it);
	*state = mix64(*state ^ global);
	return global;
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
