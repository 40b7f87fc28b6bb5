/* A 3D halo exchange, as an unmodified MPI application writes one: each rank
   owns an n^3 block of a periodic grid with one ghost layer, exchanges its six
   faces with subarray datatypes, then applies a 7-point stencil.
     halo3d [n] [iterations] [mode]
       mode: isend (default) | sendrecv | neighbor | persistent (MPI_Send_init /
       MPI_Recv_init once, MPI_Startall + MPI_Waitall each exchange)
   Prints a digest of the final grid (the same with and without the
   interposer, bit for bit) and the mean seconds per exchange. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IDX(i, j, k) ((size_t)(i) * (size_t)(m) * (size_t)(m) + (size_t)(j) * (size_t)(m) + (size_t)(k))

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int n = argc > 1 ? atoi(argv[1]) : 16;
  const int iterations = argc > 2 ? atoi(argv[2]) : 10;
  const char* mode = argc > 3 ? argv[3] : "isend";
  const int use_sendrecv = strcmp(mode, "sendrecv") == 0;
  const int use_neighbor = strcmp(mode, "neighbor") == 0;
  const int use_persistent = strcmp(mode, "persistent") == 0;
  const int m = n + 2;  /* with ghosts */

  int size, rank, dims[3] = {0, 0, 0}, periods[3] = {1, 1, 1};
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Dims_create(size, 3, dims);
  MPI_Comm cart;
  MPI_Cart_create(MPI_COMM_WORLD, 3, dims, periods, 0, &cart);
  MPI_Comm_rank(cart, &rank);

  /* Faces: for dimension d and side s (0 low, 1 high) the interior layer we
     send and the ghost layer we receive into. */
  MPI_Datatype send_t[6], recv_t[6];
  int nbr[6];
  for (int d = 0; d < 3; ++d) {
    MPI_Cart_shift(cart, d, 1, &nbr[2 * d], &nbr[2 * d + 1]);
    for (int s = 0; s < 2; ++s) {
      int sizes[3] = {m, m, m}, sub[3] = {n, n, n}, send_start[3] = {1, 1, 1}, recv_start[3] = {1, 1, 1};
      sub[d] = 1;
      send_start[d] = s == 0 ? 1 : n;      /* first / last interior layer */
      recv_start[d] = s == 0 ? 0 : n + 1;  /* low / high ghost layer */
      MPI_Type_create_subarray(3, sizes, sub, send_start, MPI_ORDER_C, MPI_DOUBLE, &send_t[2 * d + s]);
      MPI_Type_create_subarray(3, sizes, sub, recv_start, MPI_ORDER_C, MPI_DOUBLE, &recv_t[2 * d + s]);
      MPI_Type_commit(&send_t[2 * d + s]);
      MPI_Type_commit(&recv_t[2 * d + s]);
    }
  }

  double* u = calloc((size_t)m * m * m, sizeof(double));
  double* v = calloc((size_t)m * m * m, sizeof(double));
  int coords[3];
  MPI_Cart_coords(cart, rank, 3, coords);
  for (int i = 1; i <= n; ++i)
    for (int j = 1; j <= n; ++j)
      for (int k = 1; k <= n; ++k) {
        long gi = (long)coords[0] * n + i, gj = (long)coords[1] * n + j, gk = (long)coords[2] * n + k;
        u[IDX(i, j, k)] = (double)((gi * 7919 + gj * 104729 + gk * 1299709) % 1000) / 1000.0;
      }

  /* Persistent mode: the twelve requests are made once, on u and v alike
     (u and v swap after each stencil), and started every exchange. */
  MPI_Request persistent[2][12];
  if (use_persistent) {
    for (int g = 0; g < 2; ++g) {
      double* grid = g == 0 ? u : v;
      for (int f = 0; f < 6; ++f) MPI_Recv_init(grid, 1, recv_t[f], nbr[f], f ^ 1, cart, &persistent[g][f]);
      for (int f = 0; f < 6; ++f) MPI_Send_init(grid, 1, send_t[f], nbr[f], f, cart, &persistent[g][6 + f]);
    }
  }

  double exchange_seconds = 0;
  for (int it = 0; it < iterations; ++it) {
    /* A collective may not send from and receive into the same buffer: the
       neighbour mode sends from a copy (v is scratch until the stencil). */
    if (use_neighbor) memcpy(v, u, sizeof(double) * (size_t)m * m * m);
    MPI_Barrier(cart);
    double t0 = MPI_Wtime();
    if (use_neighbor) {
      /* Cartesian neighbour order is (low, high) per dimension: face f = 2d + s. */
      int counts[6] = {1, 1, 1, 1, 1, 1};
      MPI_Aint displs[6] = {0, 0, 0, 0, 0, 0};
      MPI_Neighbor_alltoallw(v, counts, displs, send_t, u, counts, displs, recv_t, cart);
    } else if (use_sendrecv) {
      for (int f = 0; f < 6; ++f) {
        /* send my side f to nbr[f]; receive into the opposite ghost from the other side */
        int opposite = f ^ 1;
        MPI_Sendrecv(u, 1, send_t[f], nbr[f], f, u, 1, recv_t[opposite], nbr[opposite], f, cart,
                     MPI_STATUS_IGNORE);
      }
    } else if (use_persistent) {
      MPI_Request* req = persistent[it % 2];  /* u is the grid of even iterations */
      MPI_Startall(12, req);
      MPI_Waitall(12, req, MPI_STATUSES_IGNORE);
    } else {
      MPI_Request req[12];
      for (int f = 0; f < 6; ++f) MPI_Irecv(u, 1, recv_t[f], nbr[f], f ^ 1, cart, &req[f]);
      for (int f = 0; f < 6; ++f) MPI_Isend(u, 1, send_t[f], nbr[f], f, cart, &req[6 + f]);
      MPI_Waitall(12, req, MPI_STATUSES_IGNORE);
    }
    exchange_seconds += MPI_Wtime() - t0;
    for (int i = 1; i <= n; ++i)
      for (int j = 1; j <= n; ++j)
        for (int k = 1; k <= n; ++k)
          v[IDX(i, j, k)] = (u[IDX(i, j, k)] + u[IDX(i - 1, j, k)] + u[IDX(i + 1, j, k)] + u[IDX(i, j - 1, k)] +
                             u[IDX(i, j + 1, k)] + u[IDX(i, j, k - 1)] + u[IDX(i, j, k + 1)]) / 7.0;
    double* t = u; u = v; v = t;
  }

  /* Digest: FNV-1a over every rank's interior bytes, combined in rank order. */
  uint64_t h = 1469598103934665603ull;
  for (int i = 1; i <= n; ++i)
    for (int j = 1; j <= n; ++j) {
      const unsigned char* p = (const unsigned char*)&u[IDX(i, j, 1)];
      for (size_t b = 0; b < (size_t)n * sizeof(double); ++b) h = (h ^ p[b]) * 1099511628211ull;
    }
  uint64_t* all = rank == 0 ? malloc(sizeof(uint64_t) * (size_t)size) : NULL;
  MPI_Gather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, 0, cart);
  double worst = 0, mean = exchange_seconds / (iterations > 0 ? iterations : 1);
  MPI_Reduce(&mean, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, cart);
  if (rank == 0) {
    uint64_t g = 1469598103934665603ull;
    for (int r = 0; r < size; ++r) g = (g ^ all[r]) * 1099511628211ull;
    printf("digest %016llx ranks %d n %d iterations %d mode %s\n", (unsigned long long)g, size, n,
           iterations, mode);
    printf("seconds_per_exchange %.9f\n", worst);
    free(all);
  }
  if (use_persistent)
    for (int g = 0; g < 2; ++g)
      for (int r = 0; r < 12; ++r) MPI_Request_free(&persistent[g][r]);
  for (int f = 0; f < 6; ++f) {
    MPI_Type_free(&send_t[f]);
    MPI_Type_free(&recv_t[f]);
  }
  free(u);
  free(v);
  MPI_Comm_free(&cart);
  MPI_Finalize();
  return 0;
}
