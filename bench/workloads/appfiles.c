//go:build ignore

/*
 * appfiles — torpor test workload: an MPI job that writes its own files.
 *
 * It checks that a restore brings back the files a program writes, not only its
 * memory. Every iteration computes a 64-bit state the way ring does (one word of
 * every page of -m MiB touched, a ring MPI_Sendrecv, one MPI_Allreduce), then:
 *   - rank 0 appends one line to DIR/log.txt (opened once with "w", not append
 *     mode, kept open, flushed each line);
 *   - rank 0 rewrites DIR/results.txt in place (opened once with "w+", kept open):
 *     rewind, write the whole table (its length grows and shrinks with the
 *     iterations), fflush, ftruncate to the new length;
 *   - rank 0, every -k iterations, creates DIR/step-NNNNNN.dat (8 KiB derived from
 *     the state) and closes it again;
 *   - every rank appends one line to its own DIR/rank-R.log, kept open for the run.
 * Every byte written depends only on the parameters and the number of ranks (no
 * time, pid or host name), so after a checkpoint, kill and restart the files must
 * be byte-identical to those of an undisturbed run.
 */
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <sys/stat.h>
#include <sys/types.h>

#define PROG "appfiles"
#define WORDS_PER_PAGE 512 /* 4096 bytes / 8 */
#define MSG_WORDS 128      /* 1 KiB ring message */
#define TAG_RING 18
#define STEP_WORDS 1024    /* 8 KiB per step file */
#define PATH_LEN 4096
#define RESULTS_MAX (64 * 1024)

struct app_opts {
	uint64_t iters;
	uint64_t sleep_us;
	uint64_t every;
	uint64_t mib;
	uint64_t print_every;
	const char *dir;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " -d DIR [-i iterations] [-s usec] [-k K] [-m MiB] [-p K] [-h]\n"
		"  -d DIR  output directory (must exist); gets log.txt, results.txt,\n"
		"          step-NNNNNN.dat and rank-R.log\n"
		"  -i N    iterations (default 100, >= 1)\n"
		"  -s us   sleep per iteration in microseconds (default 0)\n"
		"  -k K    rank 0 creates a new step-NNNNNN.dat every K iterations (default 10, >= 1)\n"
		"  -m MiB  memory per rank, touched every iteration (default 1)\n"
		"  -p K    rank 0 prints the checksum every K iterations (default 100, 0 = only at the end)\n"
		"  -h      this help\n"
		"output (rank 0): '" PROG ": start ...', '" PROG ": iter=N checksum=0x...',\n"
		"                 '" PROG ": done iters=N ranks=R checksum=0x...'\n");
}

/* parse_args returns -1 to go on, or the exit status to finish with. */
static int parse_args(int argc, char **argv, int rank, struct app_opts *o)
{
	int c;
	uint64_t *dst;
	uint64_t max, min;
	const char *what;

	o->iters = 100;
	o->sleep_us = 0;
	o->every = 10;
	o->mib = 1;
	o->print_every = 100;
	o->dir = NULL;

	opterr = 0;
	while ((c = getopt(argc, argv, ":d:i:s:k:m:p:h")) != -1) {
		switch (c) {
		case 'd': o->dir = optarg; continue;
		case 'i': dst = &o->iters; min = 1; max = UINT64_C(1) << 40; what = "iterations"; break;
		case 's': dst = &o->sleep_us; min = 0; max = UINT64_C(3600000000); what = "sleep microseconds"; break;
		case 'k': dst = &o->every; min = 1; max = UINT64_C(1) << 40; what = "step interval"; break;
		case 'm': dst = &o->mib; min = 0; max = UINT64_C(1) << 20; what = "MiB per rank"; break;
		case 'p': dst = &o->print_every; min = 0; max = UINT64_C(1) << 40; what = "print interval"; break;
		case 'h':
			if (rank == 0)
				usage(stdout);
			return 0;
		case ':':
			if (rank == 0) {
				fprintf(stderr, PROG ": option -%c needs a value\n", optopt);
				usage(stderr);
			}
			return EXIT_USAGE;
		default:
			if (rank == 0) {
				fprintf(stderr, PROG ": unknown option -%c\n", optopt);
				usage(stderr);
			}
			return EXIT_USAGE;
		}
		if (parse_u64(optarg, max, dst) != 0 || *dst < min) {
			if (rank == 0)
				fprintf(stderr,
					PROG ": bad %s '%s' for -%c: want a whole number from %" PRIu64
					     " to %" PRIu64 "\n",
					what, optarg, c, min, max);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		if (rank == 0) {
			fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
			usage(stderr);
		}
		return EXIT_USAGE;
	}
	if (o->dir == NULL || o->dir[0] == '\0') {
		if (rank == 0) {
			fprintf(stderr, PROG ": missing output directory: give -d DIR\n");
			usage(stderr);
		}
		return EXIT_USAGE;
	}
	return -1;
}

/* check_dir tells whether dir is an existing directory with room for our file names. */
static int check_dir(const char *dir, int rank)
{
	struct stat sb;

	if (strlen(dir) > PATH_LEN - 64) {
		fprintf(stderr, PROG ": rank %d: output directory name too long\n", rank);
		return -1;
	}
	if (stat(dir, &sb) != 0) {
		fprintf(stderr, PROG ": rank %d: bad output directory '%s': %s\n", rank, dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(sb.st_mode)) {
		fprintf(stderr, PROG ": rank %d: bad output directory '%s': not a directory\n", rank, dir);
		return -1;
	}
	return 0;
}

/* io_fail reports a failed I/O call on path (errno says why) and aborts the job. */
static void io_fail(int rank, const char *op, const char *path) __attribute__((noreturn));
static void io_fail(int rank, const char *op, const char *path)
{
	fprintf(stderr, PROG ": rank %d: %s %s: %s\n", rank, op, path, strerror(errno));
	fflush(stderr);
	MPI_Abort(MPI_COMM_WORLD, 1);
	exit(1); /* not reached */
}

static FILE *open_file(int rank, const char *path, const char *mode)
{
	FILE *f = fopen(path, mode);

	if (f == NULL)
		io_fail(rank, "open", path);
	return f;
}

/* put_line writes one formatted line to f and flushes it. */
static void put_line(int rank, FILE *f, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void put_line(int rank, FILE *f, const char *path, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vfprintf(f, fmt, ap);
	va_end(ap);
	if (n < 0)
		io_fail(rank, "write", path);
	if (fflush(f) != 0)
		io_fail(rank, "flush", path);
}

static void close_file(int rank, FILE *f, const char *path)
{
	if (fclose(f) != 0)
		io_fail(rank, "close", path);
}

/*
 * rewrite_results replaces the whole content of results (opened "w+") by a table
 * of 4..35 rows that depends on the iteration and the global value: it is written
 * at offset 0, flushed, and the file is cut to the new length.
 */
static void rewrite_results(int rank, FILE *f, const char *path, char *buf, uint64_t it,
			    uint64_t iters, int size, uint64_t global, uint64_t state)
{
	size_t len = 0, rows = 4 + (size_t)(mix64(global ^ it) % 32), r;
	int n;

	n = snprintf(buf, RESULTS_MAX, "# " PROG " results after iteration %" PRIu64 " of %" PRIu64
		     ", %d ranks, %zu rows\n",
		     it, iters, size, rows);
	len += (size_t)n;
	for (r = 0; r < rows; r++) {
		uint64_t v = mix64(global + r * GOLDEN64);
		n = snprintf(buf + len, RESULTS_MAX - len, "row %3zu value 0x%016" PRIx64 " low %5" PRIu64 "\n",
			     r, v, v % 100000);
		len += (size_t)n;
	}
	n = snprintf(buf + len, RESULTS_MAX - len, "# state 0x%016" PRIx64 "\n", state);
	len += (size_t)n;

	errno = 0;
	if (fseeko(f, 0, SEEK_SET) != 0)
		io_fail(rank, "seek", path);
	if (fwrite(buf, 1, len, f) != len)
		io_fail(rank, "write", path);
	if (fflush(f) != 0)
		io_fail(rank, "flush", path);
	if (ftruncate(fileno(f), (off_t)len) != 0)
		io_fail(rank, "truncate", path);
}

/* write_step creates dir/step-<it>.dat with STEP_WORDS words derived from global. */
static void write_step(int rank, const char *dir, uint64_t it, uint64_t global, uint64_t *words)
{
	char path[PATH_LEN];
	const char *p;
	size_t k, left;
	int fd;

	snprintf(path, sizeof(path), "%s/step-%06" PRIu64 ".dat", dir, it);
	for (k = 0; k < STEP_WORDS; k++)
		words[k] = mix64(global ^ (it << 32) ^ k);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		io_fail(rank, "open", path);
	p = (const char *)words;
	left = STEP_WORDS * sizeof(uint64_t);
	while (left > 0) {
		ssize_t n = write(fd, p, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			io_fail(rank, "write", path);
		}
		p += n;
		left -= (size_t)n;
	}
	if (close(fd) != 0)
		io_fail(rank, "close", path);
}

int main(int argc, char **argv)
{
	struct app_opts o;
	int rank, size, left, right, st, bad, anybad;
	uint64_t *mem = NULL, sbuf[MSG_WORDS], rbuf[MSG_WORDS], step[STEP_WORDS];
	size_t nwords, npages, k;
	uint64_t state, it, global = 0;
	char log_path[PATH_LEN], res_path[PATH_LEN], rank_path[PATH_LEN];
	char *res_buf = NULL;
	FILE *logf = NULL, *resf = NULL, *rankf;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);

	st = parse_args(argc, argv, rank, &o);
	if (st >= 0) {
		MPI_Finalize();
		return st;
	}
	/* Every rank writes into DIR (its own rank log), so every rank checks it. */
	bad = check_dir(o.dir, rank) != 0;
	MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	if (anybad) {
		MPI_Finalize();
		return EXIT_USAGE;
	}

	nwords = (size_t)o.mib * (1024 * 1024 / sizeof(uint64_t));
	npages = nwords / WORDS_PER_PAGE;
	if (nwords > 0) {
		mem = malloc(nwords * sizeof(uint64_t));
		if (mem == NULL) {
			fprintf(stderr, PROG ": rank %d: cannot allocate %" PRIu64 " MiB; use a smaller -m\n",
				rank, o.mib);
			MPI_Abort(MPI_COMM_WORLD, 1);
		}
	}

	snprintf(log_path, sizeof(log_path), "%s/log.txt", o.dir);
	snprintf(res_path, sizeof(res_path), "%s/results.txt", o.dir);
	snprintf(rank_path, sizeof(rank_path), "%s/rank-%d.log", o.dir, rank);
	if (rank == 0) {
		res_buf = malloc(RESULTS_MAX);
		if (res_buf == NULL) {
			fprintf(stderr, PROG ": rank 0: out of memory\n");
			MPI_Abort(MPI_COMM_WORLD, 1);
		}
		logf = open_file(rank, log_path, "w");
		resf = open_file(rank, res_path, "w+");
	}
	rankf = open_file(rank, rank_path, "w");

	state = mix64(UINT64_C(0x746f72706f722d61) ^ (uint64_t)rank); /* "torpor-a" */
	for (k = 0; k < nwords; k++)
		mem[k] = mix64(state + k);

	if (rank == 0) {
		say(PROG ": start ranks=%d iters=%" PRIu64 " sleep_us=%" PRIu64 " every=%" PRIu64
			 " mib=%" PRIu64 " print_every=%" PRIu64 " dir=%s",
		    size, o.iters, o.sleep_us, o.every, o.mib, o.print_every, o.dir);
		put_line(rank, logf, log_path, PROG " log: ranks %d iterations %" PRIu64 " step every %" PRIu64
			 " mib %" PRIu64 "\n", size, o.iters, o.every, o.mib);
	}
	put_line(rank, rankf, rank_path, "rank %d of %d: start state 0x%016" PRIx64 "\n", rank, size, state);

	right = (rank + 1) % size;
	left = (rank + size - 1) % size;

	for (it = 1; it <= o.iters; it++) {
		uint64_t acc = it, in[2], out[2];
		size_t p, off = (size_t)((it * 37) % WORDS_PER_PAGE);

		/* 1. Touch one word of every page, rotating through the page over iterations. */
		for (p = 0; p < npages; p++) {
			uint64_t *w = &mem[p * WORDS_PER_PAGE + off];
			uint64_t v = *w;
			acc = rotl64(acc, 5) ^ v;
			*w = mix64(v ^ state ^ p);
		}
		state = mix64(state ^ acc);

		/* 2. Ring exchange. */
		for (k = 0; k < MSG_WORDS; k++)
			sbuf[k] = mix64(state + k * GOLDEN64);
		MPI_Sendrecv(sbuf, MSG_WORDS, MPI_UINT64_T, right, TAG_RING,
			     rbuf, MSG_WORDS, MPI_UINT64_T, left, TAG_RING,
			     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		acc = 0;
		for (k = 0; k < MSG_WORDS; k++)
			acc = rotl64(acc, 7) ^ rbuf[k];
		state = mix64(state ^ rotl64(acc, 23));

		/* 3. Global value: wrapping sums are exact and order independent. */
		in[0] = state;
		in[1] = mix64(state ^ (uint64_t)rank);
		MPI_Allreduce(in, out, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
		global = mix64(out[0] ^ rotl64(out[1], 31) ^ it);
		state = mix64(state ^ global);

		/* 4. Files. */
		put_line(rank, rankf, rank_path, "rank %d iter %" PRIu64 " state 0x%016" PRIx64 "\n",
			 rank, it, state);
		if (rank == 0) {
			put_line(rank, logf, log_path, "iter %" PRIu64 " state 0x%016" PRIx64
				 " global 0x%016" PRIx64 "\n", it, state, global);
			rewrite_results(rank, resf, res_path, res_buf, it, o.iters, size, global, state);
			if (it % o.every == 0)
				write_step(rank, o.dir, it, global, step);
		}

		if (rank == 0 && o.print_every != 0 && it % o.print_every == 0)
			say(PROG ": iter=%" PRIu64 " checksum=0x%016" PRIx64, it, global);
		if (it < o.iters)
			sleep_us(o.sleep_us);
	}

	put_line(rank, rankf, rank_path, "rank %d done\n", rank);
	close_file(rank, rankf, rank_path);
	if (rank == 0) {
		put_line(rank, logf, log_path, "done iters %" PRIu64 " ranks %d checksum 0x%016" PRIx64 "\n",
			 o.iters, size, global);
		close_file(rank, logf, log_path);
		close_file(rank, resf, res_path);
	}
	/* Every file is closed before rank 0 reports completion. */
	MPI_Barrier(MPI_COMM_WORLD);
	if (rank == 0)
		say(PROG ": done iters=%" PRIu64 " ranks=%d checksum=0x%016" PRIx64, o.iters, size, global);

	free(res_buf);
	free(mem);
	MPI_Finalize();
	return 0;
}
