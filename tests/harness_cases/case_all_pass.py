# Run by tests/test_harness.py: the control case, every rank passes.
import pytest


@pytest.mark.mpi(min_size=2)
def test_allreduce_of_ranks(comm):
    assert comm.allreduce(comm.rank) == comm.size * (comm.size - 1) // 2
