"""An mpi4py program (2 or more ranks, a ring) with persistent point-to-point
of random nested derived datatypes: MPI_Send_init / MPI_Recv_init restarted
many times with the send buffer changed between starts, completed by every
completion call with persistent and non-persistent requests (and an inactive
persistent one) in the same array, then released with MPI_Request_free, also
while active. Then MPI_Sendrecv_replace, MPI_Isendrecv against MPI_Sendrecv,
and a truncated persistent receive (MPI_ERR_TRUNCATE, as the system MPI says).
It checks every byte itself, and rank 0 prints a digest of everything received
(the same with and without the interposer, bit for bit)."""

import hashlib

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
right, left = (rank + 1) % size, (rank - 1) % size
assert size >= 2, "run on 2 or more ranks"
STARTS = 4  # each persistent request is started this many times
CASES = 6   # random types (the same on every rank: one seed)
SENTINEL = 0xA5
METHODS = ["wait", "waitall", "waitany", "waitsome", "test", "testall", "testany", "testsome"]
digest = hashlib.sha256()
made = []  # every type built, freed at the end


def keep(t):
    made.append(t)
    return t


def random_type(rng, depth=3):
    """A nested type of constructors with a strided form, all displacements >= 0, never empty."""
    kind = rng.choice(["leaf", "contiguous", "vector", "hvector", "indexed_block", "subarray", "resized", "dup"])
    if depth == 0 or kind == "leaf":
        return [MPI.INT, MPI.DOUBLE, MPI.SHORT, MPI.FLOAT][rng.integers(4)]
    old = random_type(rng, depth - 1)
    ext = old.Get_extent()[1]
    if kind == "contiguous":
        return keep(old.Create_contiguous(int(rng.integers(1, 4))))
    if kind == "vector":
        bl = int(rng.integers(1, 4))
        return keep(old.Create_vector(int(rng.integers(1, 5)), bl, bl + int(rng.integers(0, 4))))
    if kind == "hvector":
        bl = int(rng.integers(1, 4))
        return keep(old.Create_hvector(int(rng.integers(1, 5)), bl, bl * ext + int(rng.integers(0, 17))))
    if kind == "indexed_block":
        n, bl = int(rng.integers(1, 5)), int(rng.integers(1, 3))
        step = bl + int(rng.integers(0, 4))
        return keep(old.Create_indexed_block(bl, [int(rng.integers(0, 3)) + i * step for i in range(n)]))
    if kind == "subarray":
        nd = int(rng.integers(1, 4))
        sizes = [int(rng.integers(1, 6)) for _ in range(nd)]
        subsizes = [int(rng.integers(1, s + 1)) for s in sizes]
        starts = [int(rng.integers(0, s - ss + 1)) for s, ss in zip(sizes, subsizes)]
        order = [MPI.ORDER_C, MPI.ORDER_FORTRAN][rng.integers(2)]
        return keep(old.Create_subarray(sizes, subsizes, starts, order=order))
    if kind == "resized":
        return keep(old.Create_resized(0, ext + int(rng.integers(0, 25))))
    return keep(old.Dup())


def span(t, count):
    """Bytes a buffer of `count` elements of `t` covers (lower bounds are >= 0)."""
    lb, ext = t.Get_extent()
    tlb, text = t.Get_true_extent()
    return tlb + text + (count - 1) * ext


def positions(t, count, nbytes):
    """Byte offsets of the type map, in order: MPI_Pack of buffers holding each offset's bytes."""
    # mpi4py packs len(buffer) // extent elements: one element of extent nbytes.
    whole = t.Create_contiguous(count)
    one = whole.Create_resized(0, nbytes).Commit()
    packed_len = t.Get_size() * count
    place = np.zeros(packed_len, dtype=np.int64)
    offsets = np.arange(nbytes, dtype=np.int64)
    for k in range(4):
        out = np.zeros(packed_len, dtype=np.uint8)
        one.Pack(((offsets >> (8 * k)) & 0xFF).astype(np.uint8), out, 0, comm)
        place |= out.astype(np.int64) << (8 * k)
    one.Free()
    whole.Free()
    return place


def fill(case, it, who, nbytes):
    return np.random.default_rng([case, it, who]).integers(0, 256, nbytes, dtype=np.uint8)


def expect(where, got, source_bytes, pos):
    want = np.full(got.size, SENTINEL, dtype=np.uint8)
    want[pos] = source_bytes[pos]
    assert np.array_equal(got, want), (rank, where)
    digest.update(got.tobytes())


def complete(method, reqs):
    if method == "wait":
        for r in reqs:
            r.Wait()
    elif method == "waitall":
        MPI.Request.Waitall(reqs)
    elif method == "waitany":
        while MPI.Request.Waitany(reqs) != MPI.UNDEFINED:
            pass
    elif method == "waitsome":
        while MPI.Request.Waitsome(reqs) is not None:
            pass
    elif method == "test":
        while not all([r.Test() for r in reqs]):
            pass
    elif method == "testall":
        while not MPI.Request.Testall(reqs):
            pass
    elif method == "testany":
        while MPI.Request.Testany(reqs) != (MPI.UNDEFINED, True):
            pass
    else:
        while MPI.Request.Testsome(reqs) is not None:
            pass


comm.Set_errhandler(MPI.ERRORS_RETURN)
rng = np.random.default_rng(20261126)
cases = [keep(random_type(rng).Dup()).Commit() for _ in range(CASES)]
# And one large enough for the system MPI's rendezvous protocol (~100 KiB).
cases.append(keep(MPI.DOUBLE.Create_vector(200, 64, 128)).Commit())
plain = keep(MPI.DOUBLE.Create_vector(8, 2, 3)).Commit()  # the non-persistent pair's type
pos_plain = positions(plain, 2, span(plain, 2))
round_no = 0

# 1. persistent send/receive, restarted with new data, mixed with Isend/Irecv
for case, t in enumerate(cases):
    count = 1 + case % 3
    nbytes = span(t, count)
    pos = positions(t, count, nbytes)
    sbuf = np.zeros(nbytes, dtype=np.uint8)
    rbuf = np.zeros(nbytes, dtype=np.uint8)
    idle_buf = np.full(nbytes, SENTINEL, dtype=np.uint8)
    psend = comm.Send_init([sbuf, count, t], dest=right, tag=10)
    precv = comm.Recv_init([rbuf, count, t], source=left, tag=10)
    idle = comm.Recv_init([idle_buf, count, t], source=left, tag=99)  # never started: inactive
    for it in range(STARTS):
        sbuf[:] = fill(case, it, rank, nbytes)  # the buffer changes between starts
        rbuf[:] = SENTINEL
        if it % 2 == 0:
            MPI.Prequest.Startall([precv, psend])
        else:
            precv.Start()
            psend.Start()
        nsrc = fill(case, 1000 + it, rank, span(plain, 2))
        ngot = np.full(span(plain, 2), SENTINEL, dtype=np.uint8)
        reqs = [precv, comm.Irecv([ngot, 2, plain], source=left, tag=11), idle, psend,
                comm.Isend([nsrc, 2, plain], dest=right, tag=11)]
        complete(METHODS[round_no % len(METHODS)], reqs)
        round_no += 1
        expect(("persistent", case, it), rbuf, fill(case, it, left, nbytes), pos)
        expect(("mixed isend", case, it), ngot, fill(case, 1000 + it, left, span(plain, 2)), pos_plain)
    assert np.all(idle_buf == SENTINEL), "an inactive persistent receive was written"
    for r in (psend, precv, idle):  # inactive: their staging goes now
        r.Free()
        assert r == MPI.REQUEST_NULL

# 2. a persistent send released while active; its receive still gets the data
t = cases[-1]
nbytes = span(t, 1)
pos = positions(t, 1, nbytes)
sbuf, rbuf = fill(7, 0, rank, nbytes), np.full(nbytes, SENTINEL, dtype=np.uint8)
psend = comm.Send_init([sbuf, 1, t], dest=right, tag=12)
precv = comm.Recv_init([rbuf, 1, t], source=left, tag=12)
precv.Start()
psend.Start()
psend.Free()
precv.Wait()
precv.Free()
expect("freed while active", rbuf, fill(7, 0, left, nbytes), pos)
comm.Barrier()  # the freed send has landed everywhere before its buffer changes
sbuf[:] = 0

# 3. MPI_Sendrecv_replace (served), MPI_Isendrecv (the system MPI's) against MPI_Sendrecv
t = cases[2]
nbytes = span(t, 2)
pos = positions(t, 2, nbytes)
buf = fill(8, 0, rank, nbytes)
comm.Sendrecv_replace([buf, 2, t], dest=right, sendtag=13, source=left, recvtag=13)
want = fill(8, 0, rank, nbytes)
want[pos] = fill(8, 0, left, nbytes)[pos]
assert np.array_equal(buf, want), "Sendrecv_replace"
digest.update(buf.tobytes())
got = np.full(nbytes, SENTINEL, dtype=np.uint8)
if rank % 2 == 0:  # neighbours mix the two calls
    comm.Isendrecv([fill(9, 0, rank, nbytes), 2, t], right, 14, [got, 2, t], left, 14).Wait()
else:
    comm.Sendrecv([fill(9, 0, rank, nbytes), 2, t], right, 14, [got, 2, t], left, 14)
expect("Isendrecv / Sendrecv", got, fill(9, 0, left, nbytes), pos)

# 4. a persistent receive shorter than the message: the system MPI's error class
t = cases[0]
nbytes = span(t, 3)
psend = comm.Send_init([fill(10, 0, rank, nbytes), 3, t], dest=right, tag=15)
precv = comm.Recv_init([np.zeros(nbytes, dtype=np.uint8), 2, t], source=left, tag=15)
MPI.Prequest.Startall([precv, psend])
try:
    precv.Wait()
    raise AssertionError("a truncated persistent receive did not fail")
except MPI.Exception as exc:
    assert exc.Get_error_class() == MPI.ERR_TRUNCATE, exc.Get_error_class()
psend.Wait()
psend.Free()
precv.Free()

comm.Barrier()
digests = comm.gather(digest.hexdigest(), root=0)
for t in reversed(made):
    t.Free()
if rank == 0:
    print("digest", hashlib.sha256("".join(digests).encode()).hexdigest())
    print("persistent_types: all checks passed")
