//go:build ignore

/*
 * ring — torpor test workload: a ring of Sendrecv plus one Allreduce per iteration.
 *
 * Every rank keeps a 64-bit state and a block of memory (-m MiB). Each iteration:
 *   1. one word in every 4 KiB page of the block is read, folded into the state and
 *      rewritten (so every page is dirty at any checkpoint and a page restored wrong
 *      changes the result);
 *   2. a message of -x KiB derived from the state goes to the right neighbour while
 *      one comes from the left neighbour (MPI_Sendrecv) and is folded in;
 *   3. MPI_Allreduce(MPI_SUM) over uint64 gives a global value that every rank folds
 *      in; that value is the checksum rank 0 prints every -p iterations and at the end.
 * Integer arithmetic only (wrapping sums are order independent), so the checksum
 * depends on the parameters and the number of ranks, never on timing, placement,
 * number of hosts, or the MPI library.
 */
#include "common.h"

#include <getopt.h>

#define PROG "ring"
#define WORDS_PER_PAGE 512 /* 4096 bytes / 8 */
#define TAG_RING 17

struct ring_opts {
	uint64_t iters;
	uint64_t mib;
	uint64_t msg_kib;
	uint64_t sleep_us;
	uint64_t print_every;
	int verbose;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [-i iterations] [-m MiB] [-x KiB] [-s usec] [-p K] [-v] [-h]\n"
		"  -i N    iterations (default 1000, >= 1)\n"
		"  -m MiB  memory per rank, touched every iteration (default 16)\n"
		"  -x KiB  size of the ring message each rank sends per iteration (default 1, >= 1)\n"
		"  -s us   sleep per iteration in microseconds (default 0)\n"
		"  -p K    rank 0 prints the checksum every K iterations (default 100, 0 = only at the end)\n"
		"  -v      print each rank's host name and pid at start\n"
		"  -h      this help\n"
		"output (rank 0): '" PROG ": start ...', '" PROG ": iter=N checksum=0x...',\n"
		"                 '" PROG ": done iters=N ranks=R checksum=0x...'\n");
}

/* parse_args returns -1 to go on, or the exit status to finish with. */
static int parse_args(int argc, char **argv, int rank, struct ring_opts *o)
{
	int c;
	uint64_t *dst;
	uint64_t max, min;
	const char *what;

	o->iters = 1000;
	o->mib = 16;
	o->msg_kib = 1;
	o->sleep_us = 0;
	o->print_every = 100;
	o->verbose = 0;

	opterr = 0;
	while ((c = getopt(argc, argv, ":i:m:x:s:p:vh")) != -1) {
		switch (c) {
		case 'i': dst = &o->iters; min = 1; max = UINT64_C(1) << 40; what = "iterations"; break;
		case 'm': dst = &o->mib; min = 0; max = UINT64_C(1) << 20; what = "MiB per rank"; break;
		case 'x': dst = &o->msg_kib; min = 1; max = UINT64_C(1) << 20; what = "message KiB"; break;
		case 's': dst = &o->sleep_us; min = 0; max = UINT64_C(3600000000); what = "sleep microseconds"; break;
		case 'p': dst = &o->print_every; min = 0; max = UINT64_C(1) << 40; what = "print interval"; break;
		case 'v': o->verbose = 1; continue;
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
	return -1;
}

int main(int argc, char **argv)
{
	struct ring_opts o;
	int rank, size, left, right, st;
	uint64_t *mem = NULL, *sbuf, *rbuf;
	size_t nwords, npages, mwords, k;
	uint64_t state, it;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);

	st = parse_args(argc, argv, rank, &o);
	if (st >= 0) {
		MPI_Finalize();
		return st;
	}

	nwords = (size_t)o.mib * (1024 * 1024 / sizeof(uint64_t));
	npages = nwords / WORDS_PER_PAGE;
	mwords = (size_t)o.msg_kib * (1024 / sizeof(uint64_t));
	if (nwords > 0) {
		mem = malloc(nwords * sizeof(uint64_t));
		if (mem == NULL) {
			fprintf(stderr, PROG ": rank %d: cannot allocate %" PRIu64 " MiB; use a smaller -m\n",
				rank, o.mib);
			MPI_Abort(MPI_COMM_WORLD, 1);
		}
	}
	sbuf = malloc(mwords * sizeof(uint64_t));
	rbuf = malloc(mwords * sizeof(uint64_t));
	if (sbuf == NULL || rbuf == NULL) {
		fprintf(stderr, PROG ": rank %d: cannot allocate %" PRIu64 " KiB message buffers\n",
			rank, o.msg_kib);
		MPI_Abort(MPI_COMM_WORLD, 1);
	}

	state = mix64(UINT64_C(0x746f72706f722d72) ^ (uint64_t)rank); /* "torpor-r" */
	for (k = 0; k < nwords; k++)
		mem[k] = mix64(state + k);

	if (rank == 0)
		say(PROG ": start ranks=%d iters=%" PRIu64 " mib=%" PRIu64 " msg_kib=%" PRIu64
			 " sleep_us=%" PRIu64 " print_every=%" PRIu64,
		    size, o.iters, o.mib, o.msg_kib, o.sleep_us, o.print_every);
	if (o.verbose)
		print_hosts(PROG, MPI_COMM_WORLD);

	right = (rank + 1) % size;
	left = (rank + size - 1) % size;

	for (it = 1; it <= o.iters; it++) {
		uint64_t acc = it, in[2], out[2], global;
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
		for (k = 0; k < mwords; k++)
			sbuf[k] = mix64(state + k * GOLDEN64);
		MPI_Sendrecv(sbuf, (int)mwords, MPI_UINT64_T, right, TAG_RING,
			     rbuf, (int)mwords, MPI_UINT64_T, left, TAG_RING,
			     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		acc = 0;
		for (k = 0; k < mwords; k++)
			acc = rotl64(acc, 7) ^ rbuf[k];
		state = mix64(state ^ rotl64(acc, 23));

		/* 3. Global value: wrapping sums are exact and order independent. */
		in[0] = state;
		in[1] = mix64(state ^ (uint64_t)rank);
		MPI_Allreduce(in, out, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
		global = mix64(out[0] ^ rotl64(out[1], 31) ^ it);
		state = mix64(state ^ global);

		if (rank == 0 && o.print_every != 0 && it % o.print_every == 0)
			say(PROG ": iter=%" PRIu64 " checksum=0x%016" PRIx64, it, global);
		if (it == o.iters && rank == 0)
			say(PROG ": done iters=%" PRIu64 " ranks=%d checksum=0x%016" PRIx64,
			    o.iters, size, global);
		if (it < o.iters)
			sleep_us(o.sleep_us);
	}

	free(sbuf);
	free(rbuf);
	free(mem);
	MPI_Finalize();
	return 0;
}
