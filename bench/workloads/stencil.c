//go:build ignore

/*
 * stencil — torpor test workload: a 2-D periodic 5-point stencil on a global N x N
 * grid of uint64 cells, block-decomposed over a Cartesian communicator
 * (MPI_Dims_create + MPI_Cart_create), with a halo exchange by MPI_Irecv/MPI_Isend +
 * MPI_Waitall every iteration and an MPI_Allreduce every -a iterations whose result
 * is fed back into the update rule.
 *
 * A cell's new value depends only on its own and its four neighbours' values (by
 * global position), on the iteration number and on the last global value, and the
 * global value is a wrapping sum over cells keyed by global position. The checksum
 * therefore depends only on (-n, -i, -a): not on timing, placement, number of hosts,
 * the MPI library, or even the number of ranks.
 */
#include "common.h"

#define PROG "stencil"

enum { TAG_UP = 1, TAG_DOWN, TAG_LEFT, TAG_RIGHT };

struct stencil_opts {
	struct run_opts run; /* -i -s -p -v */
	uint64_t n;
	uint64_t reduce_every;
};

static const char usage[] =
	"usage: " PROG " [-n N] [-i iterations] [-a A] [-s usec] [-p K] [-v] [-h]\n"
	"  -n N    global grid is N x N uint64 cells (default 512; N >= each process-grid dimension)\n"
	USAGE_ITERS
	"  -a A    Allreduce and fold the global value every A iterations (default 10, >= 1)\n"
	USAGE_RUN
	"memory per rank is about 16 * N * N / ranks bytes\n"
	USAGE_OUTPUT(PROG);

/* block_start is the first global index of block c when n items are split into d blocks. */
static size_t block_start(size_t c, size_t d, size_t n)
{
	return c * (n / d) + (c < n % d ? c : n % d);
}

struct grid {
	size_t n;          /* global size */
	size_t nr, nc;     /* local interior rows and columns */
	size_t r0, c0;     /* global index of local interior (1,1) */
	size_t ld;         /* row length with halo: nc + 2 */
	uint64_t *cur, *next;
	uint64_t *col_out[2], *col_in[2]; /* packed columns: [0] left, [1] right */
};

#define AT(g, a, i, j) ((a)[(i) * (g)->ld + (j)])

/* local_sum is the wrapping sum of every interior cell keyed by its global position. */
static uint64_t local_sum(const struct grid *g)
{
	uint64_t s = 0;
	size_t i, j;

	for (i = 1; i <= g->nr; i++) {
		uint64_t gi = (uint64_t)(g->r0 + i - 1) * g->n;
		for (j = 1; j <= g->nc; j++)
			s += mix64(AT(g, g->cur, i, j) ^ ((gi + g->c0 + j - 1) * GOLDEN64));
	}
	return s;
}

static void halo_exchange(struct grid *g, MPI_Comm cart, int up, int down, int left, int right)
{
	MPI_Request req[8];
	MPI_Status sts[8]; /* a real array: MPICH's MPI_STATUSES_IGNORE trips gcc's -Wstringop-overflow */
	size_t i;
	int nr = (int)g->nr, nc = (int)g->nc;

	for (i = 0; i < g->nr; i++) {
		g->col_out[0][i] = AT(g, g->cur, i + 1, 1);
		g->col_out[1][i] = AT(g, g->cur, i + 1, g->nc);
	}
	/* Receive first: a row that travels up arrives from the rank below, and so on. */
	MPI_Irecv(&AT(g, g->cur, g->nr + 1, 1), nc, MPI_UINT64_T, down, TAG_UP, cart, &req[0]);
	MPI_Irecv(&AT(g, g->cur, 0, 1), nc, MPI_UINT64_T, up, TAG_DOWN, cart, &req[1]);
	MPI_Irecv(g->col_in[1], nr, MPI_UINT64_T, right, TAG_LEFT, cart, &req[2]);
	MPI_Irecv(g->col_in[0], nr, MPI_UINT64_T, left, TAG_RIGHT, cart, &req[3]);
	MPI_Isend(&AT(g, g->cur, 1, 1), nc, MPI_UINT64_T, up, TAG_UP, cart, &req[4]);
	MPI_Isend(&AT(g, g->cur, g->nr, 1), nc, MPI_UINT64_T, down, TAG_DOWN, cart, &req[5]);
	MPI_Isend(g->col_out[0], nr, MPI_UINT64_T, left, TAG_LEFT, cart, &req[6]);
	MPI_Isend(g->col_out[1], nr, MPI_UINT64_T, right, TAG_RIGHT, cart, &req[7]);
	MPI_Waitall(8, req, sts);
	for (i = 0; i < g->nr; i++) {
		AT(g, g->cur, i + 1, 0) = g->col_in[0][i];
		AT(g, g->cur, i + 1, g->nc + 1) = g->col_in[1][i];
	}
}

static void sweep(struct grid *g, uint64_t salt)
{
	size_t i, j;
	uint64_t *t;

	for (i = 1; i <= g->nr; i++) {
		for (j = 1; j <= g->nc; j++) {
			uint64_t c = AT(g, g->cur, i, j);
			uint64_t nn = AT(g, g->cur, i - 1, j), s = AT(g, g->cur, i + 1, j);
			uint64_t w = AT(g, g->cur, i, j - 1), e = AT(g, g->cur, i, j + 1);
			AT(g, g->next, i, j) =
				mix64((c + rotl64(nn, 7)) ^ (rotl64(s, 19) + rotl64(w, 31)) ^ rotl64(e, 43) ^ salt);
		}
	}
	t = g->cur;
	g->cur = g->next;
	g->next = t;
}

int main(int argc, char **argv)
{
	struct stencil_opts o = {.n = 512, .reduce_every = 10};
	const struct num_opt own[] = {
		{'n', &o.n, 1, UINT64_C(1) << 20, "grid size"},
		{'a', &o.reduce_every, 1, UINT64_C(1) << 40, "Allreduce interval"},
	};
	struct grid g;
	MPI_Comm cart;
	int rank, size, st, crank;
	int dims[2] = {0, 0}, periods[2] = {1, 1}, coords[2];
	int up, down, left, right;
	uint64_t it, global = 0, salt;
	size_t i, j, cells;

	st = begin(&argc, &argv, &rank, &size, PROG, usage, &o.run, own, sizeof(own) / sizeof(own[0]));
	if (st >= 0)
		return st;
	MPI_Dims_create(size, 2, dims);
	if (o.n < (uint64_t)dims[0] || o.n < (uint64_t)dims[1]) {
		if (rank == 0)
			fprintf(stderr,
				PROG ": grid %" PRIu64 "x%" PRIu64 " is too small for a %dx%d process grid;"
				     " use -n %d or more, or fewer ranks\n",
				o.n, o.n, dims[0], dims[1], dims[0] > dims[1] ? dims[0] : dims[1]);
		MPI_Finalize();
		return EXIT_USAGE;
	}
	/* reorder = 0 keeps cart ranks equal to world ranks, so rank 0 is the printer. */
	MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, 0, &cart);
	MPI_Comm_rank(cart, &crank);
	MPI_Cart_coords(cart, crank, 2, coords);
	MPI_Cart_shift(cart, 0, 1, &up, &down);
	MPI_Cart_shift(cart, 1, 1, &left, &right);

	memset(&g, 0, sizeof(g));
	g.n = (size_t)o.n;
	g.r0 = block_start((size_t)coords[0], (size_t)dims[0], g.n);
	g.nr = block_start((size_t)coords[0] + 1, (size_t)dims[0], g.n) - g.r0;
	g.c0 = block_start((size_t)coords[1], (size_t)dims[1], g.n);
	g.nc = block_start((size_t)coords[1] + 1, (size_t)dims[1], g.n) - g.c0;
	g.ld = g.nc + 2;
	cells = (g.nr + 2) * g.ld;
	g.cur = calloc(cells, sizeof(uint64_t));
	g.next = calloc(cells, sizeof(uint64_t));
	for (i = 0; i < 2; i++) {
		g.col_out[i] = malloc(g.nr * sizeof(uint64_t));
		g.col_in[i] = malloc(g.nr * sizeof(uint64_t));
	}
	if (g.cur == NULL || g.next == NULL || g.col_out[0] == NULL || g.col_out[1] == NULL ||
	    g.col_in[0] == NULL || g.col_in[1] == NULL) {
		fprintf(stderr, PROG ": rank %d: cannot allocate a %zux%zu block; use a smaller -n\n",
			rank, g.nr, g.nc);
		MPI_Abort(MPI_COMM_WORLD, 1);
	}
	for (i = 1; i <= g.nr; i++)
		for (j = 1; j <= g.nc; j++)
			AT(&g, g.cur, i, j) = mix64(UINT64_C(0x746f72706f722d73) ^ /* "torpor-s" */
						    ((uint64_t)(g.r0 + i - 1) * g.n + g.c0 + j - 1));

	if (rank == 0)
		say(PROG ": start ranks=%d dims=%dx%d n=%" PRIu64 " iters=%" PRIu64 " reduce_every=%" PRIu64
			 " sleep_us=%" PRIu64 " print_every=%" PRIu64,
		    size, dims[0], dims[1], o.n, o.run.iters, o.reduce_every, o.run.sleep_us, o.run.print_every);
	if (o.run.verbose)
		print_hosts(PROG, MPI_COMM_WORLD);

	salt = mix64(o.n);
	for (it = 1; it <= o.run.iters; it++) {
		int reduce = it % o.reduce_every == 0;
		int print = it == o.run.iters || (o.run.print_every != 0 && it % o.run.print_every == 0);

		halo_exchange(&g, cart, up, down, left, right);
		sweep(&g, salt ^ it);

		if (reduce || print) {
			uint64_t local = local_sum(&g);
			MPI_Allreduce(&local, &global, 1, MPI_UINT64_T, MPI_SUM, cart);
			global = mix64(global ^ it);
		}
		/* Only the Allreduce schedule (-a) feeds back; printing never changes the result. */
		if (reduce)
			salt = global;
		end_iter(PROG, &o.run, rank, size, it, global);
	}

	for (i = 0; i < 2; i++) {
		free(g.col_out[i]);
		free(g.col_in[i]);
	}
	free(g.cur);
	free(g.next);
	MPI_Comm_free(&cart);
	MPI_Finalize();
	return 0;
}
