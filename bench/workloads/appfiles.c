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

#define PROG "appfiles"
#define MSG_WORDS 128      /* 1 KiB ring message */
#define TAG_RING 18
#define STEP_WORDS 1024    /* 8 KiB per step file */
#define RESULTS_MAX (64 * 1024)

struct app_opts {
	struct run_opts run; /* -d -i -s -p */
	uint64_t every;
	uint64_t mib;
};

static const char usage[] =
	"usage: " PROG " -d DIR [-i iterations] [-s usec] [-k K] [-m MiB] [-p K] [-h]\n"
	USAGE_DIR("log.txt, results.txt,\n"
		  "          step-NNNNNN.dat and rank-R.log")
	USAGE_ITERS_DEFAULT("100")
	USAGE_SLEEP
	"  -k K    rank 0 creates a new step-NNNNNN.dat every K iterations (default 10, >= 1)\n"
	"  -m MiB  memory per rank, touched every iteration (default 1)\n"
	USAGE_PRINT
	USAGE_HELP
	USAGE_OUTPUT(PROG);

/* io_fail reports a failed I/O call on path (errno says why) and aborts the job. */
static void io_fail(int rank, const char *op, const char *path) __attribute__((noreturn));
static void io_fail(int rank, const char *op, const char *path)
{
	fail(PROG, rank, "%s %s: %s", op, path, strerror(errno));
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
	struct app_opts o = {.every = 10, .mib = 1};
	const struct num_opt own[] = {
		{'k', &o.every, 1, UINT64_C(1) << 40, "step interval"},
		{'m', &o.mib, 0, UINT64_C(1) << 20, "MiB per rank"},
	};
	const struct run_spec spec = {.iters = 100, .max_iters = UINT64_C(1) << 40, .dir = 1};
	int rank, size, st;
	uint64_t *mem, sbuf[MSG_WORDS], rbuf[MSG_WORDS], step[STEP_WORDS];
	size_t npages;
	uint64_t state, it, global = 0;
	char log_path[PATH_LEN], res_path[PATH_LEN], rank_path[PATH_LEN];
	char *res_buf = NULL;
	FILE *logf = NULL, *resf = NULL, *rankf;

	/* Every rank writes into DIR (its own rank log), so every rank checks it. */
	st = begin_run(&argc, &argv, &rank, &size, PROG, usage, &spec, &o.run, own, sizeof(own) / sizeof(own[0]));
	if (st >= 0)
		return st;

	state = mix64(UINT64_C(0x746f72706f722d61) ^ (uint64_t)rank); /* "torpor-a" */
	mem = alloc_pages(PROG, rank, o.mib, state, &npages);

	snprintf(log_path, sizeof(log_path), "%s/log.txt", o.run.dir);
	snprintf(res_path, sizeof(res_path), "%s/results.txt", o.run.dir);
	snprintf(rank_path, sizeof(rank_path), "%s/rank-%d.log", o.run.dir, rank);
	if (rank == 0) {
		res_buf = malloc(RESULTS_MAX);
		if (res_buf == NULL)
			fail(PROG, rank, "out of memory");
		logf = open_file(rank, log_path, "w");
		resf = open_file(rank, res_path, "w+");
	}
	rankf = open_file(rank, rank_path, "w");

	if (rank == 0) {
		say(PROG ": start ranks=%d iters=%" PRIu64 " sleep_us=%" PRIu64 " every=%" PRIu64
			 " mib=%" PRIu64 " print_every=%" PRIu64 " dir=%s",
		    size, o.run.iters, o.run.sleep_us, o.every, o.mib, o.run.print_every, o.run.dir);
		put_line(rank, logf, log_path, PROG " log: ranks %d iterations %" PRIu64 " step every %" PRIu64
			 " mib %" PRIu64 "\n", size, o.run.iters, o.every, o.mib);
	}
	put_line(rank, rankf, rank_path, "rank %d of %d: start state 0x%016" PRIx64 "\n", rank, size, state);

	for (it = 1; it <= o.run.iters; it++) {
		/* 1-3. The state step of ring: memory pages, ring exchange, global value. */
		state = touch_pages(mem, npages, state, it);
		state = ring_exchange(state, 0, sbuf, rbuf, MSG_WORDS, rank, size, TAG_RING);
		global = reduce_state(&state, rank, it);

		/* 4. Files. */
		put_line(rank, rankf, rank_path, "rank %d iter %" PRIu64 " state 0x%016" PRIx64 "\n",
			 rank, it, state);
		if (rank == 0) {
			put_line(rank, logf, log_path, "iter %" PRIu64 " state 0x%016" PRIx64
				 " global 0x%016" PRIx64 "\n", it, state, global);
			rewrite_results(rank, resf, res_path, res_buf, it, o.run.iters, size, global, state);
			if (it % o.every == 0)
				write_step(rank, o.run.dir, it, global, step);
		}
		close_iter(PROG, &o.run, rank, it, global);
	}

	put_line(rank, rankf, rank_path, "rank %d done\n", rank);
	close_file(rank, rankf, rank_path);
	if (rank == 0) {
		put_line(rank, logf, log_path, "done iters %" PRIu64 " ranks %d checksum 0x%016" PRIx64 "\n",
			 o.run.iters, size, global);
		close_file(rank, logf, log_path);
		close_file(rank, resf, res_path);
	}
	/* Every file is closed before rank 0 reports completion. */
	MPI_Barrier(MPI_COMM_WORLD);
	say_done(PROG, &o.run, rank, size, global);

	free(res_buf);
	free(mem);
	MPI_Finalize();
	return 0;
}
