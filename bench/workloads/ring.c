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

#define PROG "ring"
#define WORDS_PER_PAGE 512 /* 4096 bytes / 8 */
#define TAG_RING 17

struct ring_opts {
	struct run_opts run; /* -i -s -p -v */
	uint64_t mib;
	uint64_t msg_kib;
};

static const char usage[] =
	"usage: " PROG " [-i iterations] [-m MiB] [-x KiB] [-s usec] [-p K] [-v] [-h]\n"
	USAGE_ITERS
	"  -m MiB  memory per rank, touched every iteration (default 16)\n"
	"  -x KiB  size of the ring message each rank sends per iteration (default 1, >= 1)\n"
	USAGE_RUN
	USAGE_OUTPUT(PROG);

int main(int argc, char **argv)
{
	struct ring_opts o = {.mib = 16, .msg_kib = 1};
	const struct num_opt own[] = {
		{'m', &o.mib, 0, UINT64_C(1) << 20, "MiB per rank"},
		{'x', &o.msg_kib, 1, UINT64_C(1) << 20, "message KiB"},
	};
	int rank, size, left, right, st;
	uint64_t *mem = NULL, *sbuf, *rbuf;
	size_t nwords, npages, mwords, k;
	uint64_t state, it;

	st = begin(&argc, &argv, &rank, &size, PROG, usage, &o.run, own, sizeof(own) / sizeof(own[0]));
	if (st >= 0)
		return st;

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
		    size, o.run.iters, o.mib, o.msg_kib, o.run.sleep_us, o.run.print_every);
	if (o.run.verbose)
		print_hosts(PROG, MPI_COMM_WORLD);

	right = (rank + 1) % size;
	left = (rank + size - 1) % size;

	for (it = 1; it <= o.run.iters; it++) {
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

		end_iter(PROG, &o.run, rank, size, it, global);
	}

	free(sbuf);
	free(rbuf);
	free(mem);
	MPI_Finalize();
	return 0;
}
