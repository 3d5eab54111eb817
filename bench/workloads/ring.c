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
	int rank, size, st;
	uint64_t *mem, *sbuf, *rbuf;
	size_t npages, mwords;
	uint64_t state, it;

	st = begin(&argc, &argv, &rank, &size, PROG, usage, &o.run, own, sizeof(own) / sizeof(own[0]));
	if (st >= 0)
		return st;

	state = mix64(UINT64_C(0x746f72706f722d72) ^ (uint64_t)rank); /* "torpor-r" */
	mem = alloc_pages(PROG, rank, o.mib, state, &npages);
	mwords = (size_t)o.msg_kib * (1024 / sizeof(uint64_t));
	sbuf = malloc(mwords * sizeof(uint64_t));
	rbuf = malloc(mwords * sizeof(uint64_t));
	if (sbuf == NULL || rbuf == NULL)
		fail(PROG, rank, "cannot allocate %" PRIu64 " KiB message buffers", o.msg_kib);

	if (rank == 0)
		say(PROG ": start ranks=%d iters=%" PRIu64 " mib=%" PRIu64 " msg_kib=%" PRIu64
			 " sleep_us=%" PRIu64 " print_every=%" PRIu64,
		    size, o.run.iters, o.mib, o.msg_kib, o.run.sleep_us, o.run.print_every);
	if (o.run.verbose)
		print_hosts(PROG, MPI_COMM_WORLD);

	for (it = 1; it <= o.run.iters; it++) {
		uint64_t global;

		/* 1. memory pages, 2. ring exchange, 3. global value (see the top of the file). */
		state = touch_pages(mem, npages, state, it);
		state = ring_exchange(state, 0, sbuf, rbuf, mwords, rank, size, TAG_RING);
		global = reduce_state(&state, rank, it);
		end_iter(PROG, &o.run, rank, size, it, global);
	}

	free(sbuf);
	free(rbuf);
	free(mem);
	MPI_Finalize();
	return 0;
}
