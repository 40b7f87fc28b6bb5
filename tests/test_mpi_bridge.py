"""pyhpc._mpi: mpi4py communicators handed to C++ as raw MPI_Comm handles.
Runs at 1 rank (serial) and at 2..4 ranks (`--with-mpi`)."""

from __future__ import annotations

import pytest
from mpi4py import MPI

import pyhpc
from pyhpc import _mpi


def test_comm_self_from_cpp():
    assert _mpi.comm_rank_size(MPI.COMM_SELF) == (0, 1)


def test_non_comm_is_rejected_naming_the_argument():
    with pytest.raises(TypeError, match="comm"):
        _mpi.comm_rank_size(42)
    with pytest.raises(TypeError, match="comm"):
        _mpi.comm_rank_size(None)


def test_null_comm_is_an_invalid_argument():
    with pytest.raises(pyhpc.InvalidArgumentError, match="MPI_COMM_NULL"):
        _mpi.comm_rank_size(MPI.COMM_NULL)


def test_pingpong_needs_two_ranks():
    with pytest.raises(pyhpc.InvalidArgumentError, match="2 ranks"):
        _mpi.pingpong_seconds(MPI.COMM_SELF, 8, 0, 1)


def test_bad_reps_is_an_invalid_argument():
    with pytest.raises(pyhpc.InvalidArgumentError, match="reps"):
        _mpi.allreduce_seconds(MPI.COMM_SELF, 8, 0, 0)


@pytest.mark.mpi(min_size=2)
def test_world_and_split_comm_from_cpp(comm):
    assert _mpi.comm_rank_size(comm) == (comm.rank, comm.size)
    half = comm.Split(color=comm.rank % 2, key=-comm.rank)  # reversed order inside each half
    try:
        assert _mpi.comm_rank_size(half) == (half.rank, half.size)
        assert half.size == (comm.size + 1 - comm.rank % 2) // 2
    finally:
        half.Free()


@pytest.mark.mpi(min_size=2)
def test_pingpong_and_allreduce_loops(comm):
    seconds = _mpi.pingpong_seconds(comm, 4096, 2, 5)
    assert len(seconds) == 5
    if comm.rank == 0:
        assert all(s > 0 for s in seconds)
    else:
        assert all(s == 0 for s in seconds)
    seconds = _mpi.allreduce_seconds(comm, 1024, 1, 3)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    # max over ranks: every rank reports the same numbers
    assert comm.allgather(seconds) == [seconds] * comm.size
