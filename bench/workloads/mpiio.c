//go:build ignore

/*
 * mpiio — torpor test workload: MPI-IO on one shared file, kept open for the run.
 *
 * DIR/shared.dat is opened once with MPI_File_open(MPI_COMM_WORLD,
 * MPI_MODE_CREATE | MPI_MODE_WRONLY) and cut to length 0 (MPI_File_set_size), so a
 * reused directory gives the same bytes. Every iteration computes a 64-bit state
 * the way ring does (a ring MPI_Sendrecv and one MPI_Allreduce), then every rank
 * writes a block of -b KiB derived from its state and the iteration with
 * MPI_File_write_at_all at byte offset ((iter - 1) * ranks + rank) * block, and
 * the file is synced (MPI_File_sync). At the end MPI_File_close. The file is
 * iterations * ranks * block bytes long and each byte depends only on the
 * parameters and the number of ranks.
 */
#include "common.h"

#define PROG "mpiio"
#define MSG_WORDS 128 /* 1 KiB ring message */
#define TAG_RING 19

struct io_opts {
	struct run_opts run; /* -d -i -s -p */
	uint64_t block_kib;
};

static const char usage[] =
	"usage: " PROG " -d DIR [-i iterations] [-s usec] [-b KiB] [-p K] [-h]\n"
	USAGE_DIR("shared.dat")
	USAGE_ITERS_DEFAULT("100")
	USAGE_SLEEP
	"  -b KiB  block each rank writes per iteration (default 4, 1 to 1024)\n"
	USAGE_PRINT
	USAGE_HELP
	USAGE_OUTPUT(PROG);

/* check_io aborts the job with a message naming path when an MPI-IO call failed. */
static void check_io(int rc, int rank, const char *op, const char *path)
{
	char msg[MPI_MAX_ERROR_STRING];
	int len = 0;

	if (rc == MPI_SUCCESS)
		return;
	if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
		snprintf(msg, sizeof(msg), "MPI error %d", rc);
	fail(PROG, rank, "%s %s: %s", op, path, msg);
}

int main(int argc, char **argv)
{
	struct io_opts o = {.block_kib = 4};
	const struct num_opt own[] = {
		{'b', &o.block_kib, 1, 1024, "block KiB"},
	};
	const struct run_spec spec = {.iters = 100, .max_iters = UINT64_C(1) << 32, .dir = 1};
	int rank, size, st, count;
	uint64_t sbuf[MSG_WORDS], rbuf[MSG_WORDS], *block;
	size_t bwords, k;
	uint64_t state, it, global = 0;
	char path[PATH_LEN];
	MPI_File fh;
	MPI_Status status;
	MPI_Offset bbytes;

	st = begin_run(&argc, &argv, &rank, &size, PROG, usage, &spec, &o.run, own, sizeof(own) / sizeof(own[0]));
	if (st >= 0)
		return st;
	snprintf(path, sizeof(path), "%s/shared.dat", o.run.dir);

	bwords = (size_t)o.block_kib * (1024 / sizeof(uint64_t));
	bbytes = (MPI_Offset)(bwords * sizeof(uint64_t));
	block = malloc(bwords * sizeof(uint64_t));
	if (block == NULL)
		fail(PROG, rank, "cannot allocate a %" PRIu64 " KiB block", o.block_kib);

	/* MPI_File_* return error codes by default (MPI_ERRORS_RETURN); check_io checks each. */
	check_io(MPI_File_open(MPI_COMM_WORLD, path, MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh),
		 rank, "open", path);
	check_io(MPI_File_set_size(fh, 0), rank, "truncate", path);

	state = mix64(UINT64_C(0x746f72706f722d69) ^ (uint64_t)rank); /* "torpor-i" */
	if (rank == 0)
		say(PROG ": start ranks=%d iters=%" PRIu64 " sleep_us=%" PRIu64 " block_kib=%" PRIu64
			 " print_every=%" PRIu64 " dir=%s",
		    size, o.run.iters, o.run.sleep_us, o.block_kib, o.run.print_every, o.run.dir);

	for (it = 1; it <= o.run.iters; it++) {
		MPI_Offset off = (MPI_Offset)(((it - 1) * (uint64_t)size + (uint64_t)rank) * (uint64_t)bbytes);

		/* 1. Ring exchange (salted with the iteration), 2. global value. */
		state = ring_exchange(state, it, sbuf, rbuf, MSG_WORDS, rank, size, TAG_RING);
		global = reduce_state(&state, rank, it);

		/* 3. This rank's block of the iteration's stripe, written collectively. */
		for (k = 0; k < bwords; k++)
			block[k] = mix64(state ^ (it << 40) ^ ((uint64_t)rank << 32) ^ k);
		check_io(MPI_File_write_at_all(fh, off, block, (int)bwords, MPI_UINT64_T, &status),
			 rank, "write", path);
		if (MPI_Get_count(&status, MPI_UINT64_T, &count) != MPI_SUCCESS || count != (int)bwords)
			fail(PROG, rank, "write %s: short write at offset %lld (%d of %zu words)",
			     path, (long long)off, count, bwords);
		check_io(MPI_File_sync(fh), rank, "sync", path);

		close_iter(PROG, &o.run, rank, it, global);
	}

	check_io(MPI_File_close(&fh), rank, "close", path);
	say_done(PROG, &o.run, rank, size, global);

	free(block);
	MPI_Finalize();
	return 0;
}
