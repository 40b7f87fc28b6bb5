/* An unmodified MPI program for the interposer tests: packs and unpacks
   strided datatypes (and one without a strided form) with MPI_Pack/MPI_Unpack
   and prints an FNV-1a digest of every packed buffer, so runs with and without
   the interposer can be compared byte for byte. Exit status 1 if a round trip
   (pack, unpack into zeros, compare the covered bytes) fails. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(const unsigned char* p, int n) {
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static int check(const char* name, MPI_Datatype t, int count, int rank) {
  MPI_Aint lb, extent, true_lb, true_extent;
  MPI_Type_get_extent(t, &lb, &extent);
  MPI_Type_get_true_extent(t, &true_lb, &true_extent);
  size_t span = (size_t)(true_lb + true_extent + (count - 1) * extent);
  unsigned char* src = malloc(span);
  unsigned char* back = calloc(span, 1);
  for (size_t i = 0; i < span; ++i) src[i] = (unsigned char)(i * 131 + 7);
  int packed_size = 0, position = 0;
  MPI_Pack_size(count, t, MPI_COMM_WORLD, &packed_size);
  unsigned char* packed = malloc((size_t)packed_size);
  MPI_Pack(src, count, t, packed, packed_size, &position, MPI_COMM_WORLD);
  int used = position;
  position = 0;
  MPI_Unpack(packed, used, &position, back, count, t, MPI_COMM_WORLD);
  /* Every byte the type covers must have come back; the rest stay zero. */
  int ok = position == used;
  unsigned char* again = malloc((size_t)packed_size);
  int p2 = 0;
  MPI_Pack(back, count, t, again, packed_size, &p2, MPI_COMM_WORLD);
  ok = ok && p2 == used && memcmp(again, packed, (size_t)used) == 0;
  if (rank == 0) printf("%-28s count=%d bytes=%d digest=%016llx %s\n", name, count, used,
                        (unsigned long long)fnv1a(packed, used), ok ? "ok" : "ROUND-TRIP-FAILED");
  free(src); free(back); free(packed); free(again);
  return ok;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ok = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Datatype t, inner, f;

  MPI_Type_vector(1000, 1, 3, MPI_BYTE, &t); MPI_Type_commit(&t);
  ok &= check("vector byte 1/3", t, 4, rank); MPI_Type_free(&t);

  MPI_Type_vector(513, 3, 7, MPI_INT, &t); MPI_Type_commit(&t);
  ok &= check("vector int 3/7", t, 2, rank); MPI_Type_free(&t);

  int sizes[3] = {20, 30, 40}, subs[3] = {5, 6, 7}, starts[3] = {2, 3, 4};
  MPI_Type_create_subarray(3, sizes, subs, starts, MPI_ORDER_C, MPI_DOUBLE, &t); MPI_Type_commit(&t);
  ok &= check("subarray 3D C double", t, 1, rank); MPI_Type_free(&t);
  MPI_Type_create_subarray(3, sizes, subs, starts, MPI_ORDER_FORTRAN, MPI_FLOAT, &t); MPI_Type_commit(&t);
  ok &= check("subarray 3D Fortran float", t, 2, rank); MPI_Type_free(&t);

  MPI_Type_vector(4, 2, 5, MPI_SHORT, &inner);
  MPI_Type_create_hvector(6, 1, 64, inner, &t); MPI_Type_commit(&t);
  ok &= check("hvector of vector", t, 3, rank); MPI_Type_free(&t); MPI_Type_free(&inner);

  int displs[4] = {12, 8, 4, 0};
  MPI_Type_create_indexed_block(4, 2, displs, MPI_DOUBLE, &t); MPI_Type_commit(&t);
  ok &= check("indexed_block decreasing", t, 2, rank); MPI_Type_free(&t);

  MPI_Type_vector(16, 1, 2, MPI_DOUBLE, &inner);
  MPI_Type_create_resized(inner, 0, 8, &f); MPI_Type_commit(&f);
  ok &= check("resized interleave", f, 2, rank); MPI_Type_free(&f); MPI_Type_free(&inner);

  int blocklens[2] = {1, 2};
  MPI_Aint sdispls[2] = {0, 16};
  MPI_Datatype stypes[2] = {MPI_INT, MPI_DOUBLE};
  MPI_Type_create_struct(2, blocklens, sdispls, stypes, &t); MPI_Type_commit(&t);
  ok &= check("struct (system MPI)", t, 3, rank); MPI_Type_free(&t);

  MPI_Finalize();
  return ok ? 0 : 1;
}
