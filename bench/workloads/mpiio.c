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

#include <getopt.h>
#include <sys/stat.h>
#include <sys/types.h>

#define PROG "mpiio"
#define MSG_WORDS 128 /* 1 KiB ring message */
#define TAG_RING 19
#define PATH_LEN 4096

struct io_opts {
	uint64_t iters;
	uint64_t sleep_us;
	uint64_t block_kib;
	uint64_t print_every;
	const char *dir;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " -d DIR [-i iterations] [-s usec] [-b KiB] [-p K] [-h]\n"
		"  -d DIR  output directory (must exist); gets shared.dat\n"
		"  -i N    iterations (default 100, >= 1)\n"
		"  -s us   sleep per iteration in microseconds (default 0)\n"
		"  -b KiB  block each rank writes per iteration (default 4, 1 to 1024)\n"
		"  -p K    rank 0 prints the checksum every K iterations (default 100, 0 = only at the end)\n"
		"  -h      this help\n"
		"output (rank 0): '" PROG ": start ...', '" PROG ": iter=N checksum=0x...',\n"
		"                 '" PROG ": done iters=N ranks=R checksum=0x...'\n");
}

/* parse_args returns -1 to go on, or the exit status to finish with. */
static int parse_args(int argc, char **argv, int rank, struct io_opts *o)
{
	int c;
	uint64_t *dst;
	uint64_t max, min;
	const char *what;

	o->iters = 100;
	o->sleep_us = 0;
	o->block_kib = 4;
	o->print_every = 100;
	o->dir = NULL;

	opterr = 0;
	while ((c = getopt(argc, argv, ":d:i:s:b:p:h")) != -1) {
		switch (c) {
		case 'd': o->dir = optarg; continue;
		case 'i': dst = &o->iters; min = 1; max = UINT64_C(1) << 32; what = "iterations"; break;
		case 's': dst = &o->sleep_us; min = 0; max = UINT64_C(3600000000); what = "sleep microseconds"; break;
		case 'b': dst = &o->block_kib; min = 1; max = 1024; what = "block KiB"; break;
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

/* check_dir tells whether dir is an existing directory with room for our file name. */
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

/* check_io aborts the job with a message naming path when an MPI-IO call failed. */
static void check_io(int rc, int rank, const char *op, const char *path)
{
	char msg[MPI_MAX_ERROR_STRING];
	int len = 0;

	if (rc == MPI_SUCCESS)
		return;
	if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
		snprintf(msg, sizeof(msg), "MPI error %d", rc);
	fprintf(stderr, PROG ": rank %d: %s %s: %s\n", rank, op, path, msg);
	fflush(stderr);
	MPI_Abort(MPI_COMM_WORLD, 1);
}

int main(int argc, char **argv)
{
	struct io_opts o;
	int rank, size, left, right, st, bad, anybad, count;
	uint64_t sbuf[MSG_WORDS], rbuf[MSG_WORDS], *block;
	size_t bwords, k;
	uint64_t state, it, global = 0, acc;
	char path[PATH_LEN];
	MPI_File fh;
	MPI_Status status;
	MPI_Offset bbytes;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);

	st = parse_args(argc, argv, rank, &o);
	if (st >= 0) {
		MPI_Finalize();
		return st;
	}
	bad = check_dir(o.dir, rank) != 0;
	MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
	if (anybad) {
		MPI_Finalize();
		return EXIT_USAGE;
	}
	snprintf(path, sizeof(path), "%s/shared.dat", o.dir);

	bwords = (size_t)o.block_kib * (1024 / sizeof(uint64_t));
	bbytes = (MPI_Offset)(bwords * sizeof(uint64_t));
	block = malloc(bwords * sizeof(uint64_t));
	if (block == NULL) {
		fprintf(stderr, PROG ": rank %d: cannot allocate a %" PRIu64 " KiB block\n", rank, o.block_kib);
		MPI_Abort(MPI_COMM_WORLD, 1);
	}

	/* MPI_File_* return error codes by default (MPI_ERRORS_RETURN); check_io checks each. */
	check_io(MPI_File_open(MPI_COMM_WORLD, path, MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh),
		 rank, "open", path);
	check_io(MPI_File_set_size(fh, 0), rank, "truncate", path);

	state = mix64(UINT64_C(0x746f72706f722d69) ^ (uint64_t)rank); /* "torpor-i" */
	if (rank == 0)
		say(PROG ": start ranks=%d iters=%" PRIu64 " sleep_us=%" PRIu64 " block_kib=%" PRIu64
			 " print_every=%" PRIu64 " dir=%s",
		    size, o.iters, o.sleep_us, o.block_kib, o.print_every, o.dir);

	right = (rank + 1) % size;
	left = (rank + size - 1) % size;

	for (it = 1; it <= o.iters; it++) {
		uint64_t in[2], out[2];
		MPI_Offset off = (MPI_Offset)(((it - 1) * (uint64_t)size + (uint64_t)rank) * (uint64_t)bbytes);

		/* 1. Ring exchange. */
		for (k = 0; k < MSG_WORDS; k++)
			sbuf[k] = mix64(state + k * GOLDEN64 + it);
		MPI_Sendrecv(sbuf, MSG_WORDS, MPI_UINT64_T, right, TAG_RING,
			     rbuf, MSG_WORDS, MPI_UINT64_T, left, TAG_RING,
			     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		acc = it;
		for (k = 0; k < MSG_WORDS; k++)
			acc = rotl64(acc, 7) ^ rbuf[k];
		state = mix64(state ^ rotl64(acc, 23));

		/* 2. Global value: wrapping sums are exact and order independent. */
		in[0] = state;
		in[1] = mix64(state ^ (uint64_t)rank);
		MPI_Allreduce(in, out, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
		global = mix64(out[0] ^ rotl64(out[1], 31) ^ it);
		state = mix64(state ^ global);

		/* 3. This rank's block of the iteration's stripe, written collectively. */
		for (k = 0; k < bwords; k++)
			block[k] = mix64(state ^ (it << 40) ^ ((uint64_t)rank << 32) ^ k);
		check_io(MPI_File_write_at_all(fh, off, block, (int)bwords, MPI_UINT64_T, &status),
			 rank, "write", path);
		if (MPI_Get_count(&status, MPI_UINT64_T, &count) != MPI_SUCCESS || count != (int)bwords) {
			fprintf(stderr, PROG ": rank %d: write %s: short write at offset %lld (%d of %zu words)\n",
				rank, path, (long long)off, count, bwords);
			MPI_Abort(MPI_COMM_WORLD, 1);
		}
		check_io(MPI_File_sync(fh), rank, "sync", path);

		if (rank == 0 && o.print_every != 0 && it % o.print_every == 0)
			say(PROG ": iter=%" PRIu64 " checksum=0x%016" PRIx64, it, global);
		if (it < o.iters)
			sleep_us(o.sleep_us);
	}

	check_io(MPI_File_close(&fh), rank, "close", path);
	if (rank == 0)
		say(PROG ": done iters=%" PRIu64 " ranks=%d checksum=0x%016" PRIx64, o.iters, size, global);

	free(block);
	MPI_Finalize();
	return 0;
}
