/* 8-byte contiguous ping-pong between ranks 0 and 1: the cost of one
   MPI_Send + MPI_Recv pair when nothing needs packing, i.e. what an
   interposer adds to every call it only passes through.
     pingpong8 [round_trips]
   Prints the median over 7 batches of the one-way time in nanoseconds. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int trips = argc > 1 ? atoi(argv[1]) : 20000;
  char buf[8] = {0};
  double batches[7];
  for (int b = -1; b < 7; ++b) { /* b = -1: warm-up */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < trips; ++i) {
      if (rank == 0) {
        MPI_Send(buf, 8, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(buf, 8, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else if (rank == 1) {
        MPI_Recv(buf, 8, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(buf, 8, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
      }
    }
    if (b >= 0) batches[b] = (MPI_Wtime() - t0) / trips / 2 * 1e9;
  }
  qsort(batches, 7, sizeof(double), cmp);
  if (rank == 0) printf("ns_per_message %.2f\n", batches[3]);
  MPI_Finalize();
  return 0;
}
