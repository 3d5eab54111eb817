/* mpitest: a small MPI program for pmixd's tests.
 *   mpitest                     Allreduce + Sendrecv ring, prints one "ok" line per rank
 *   mpitest abort RANK CODE     RANK calls MPI_Abort(MPI_COMM_WORLD, CODE) after the Allreduce
 *   mpitest sleep RANK          RANK prints "sleeping" and sleeps; the others wait in a barrier
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int rank, size, sum, one, left, right, from = -1, len;
	char host[MPI_MAX_PROCESSOR_NAME];
	const char *mode = argc > 1 ? argv[1] : "ok";

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	MPI_Get_processor_name(host, &len);

	one = rank + 1;
	MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);

	if (strcmp(mode, "abort") == 0 && argc > 3 && rank == atoi(argv[2])) {
		fprintf(stderr, "rank %d aborting with %d\n", rank, atoi(argv[3]));
		fflush(stderr);
		MPI_Abort(MPI_COMM_WORLD, atoi(argv[3]));
	}
	if (strcmp(mode, "sleep") == 0 && argc > 2 && rank == atoi(argv[2])) {
		printf("rank %d pid %d sleeping\n", rank, (int)getpid());
		fflush(stdout);
		for (;;)
			sleep(1);
	}

	right = (rank + 1) % size;
	left = (rank + size - 1) % size;
	MPI_Sendrecv(&rank, 1, MPI_INT, right, 7, &from, 1, MPI_INT, left, 7, MPI_COMM_WORLD,
		     MPI_STATUS_IGNORE);
	MPI_Barrier(MPI_COMM_WORLD);

	if (sum == size * (size + 1) / 2 && from == left)
		printf("rank %d of %d ok sum=%d left=%d host=%s\n", rank, size, sum, from, host);
	else
		printf("rank %d of %d BAD sum=%d left=%d(want %d)\n", rank, size, sum, from, left);
	fflush(stdout);
	MPI_Finalize();
	return 0;
}
