# Run by tests/test_harness.py under 2 ranks: rank 1 fails an assertion while
# rank 0 passes and then waits in a collective. The job must fail, not hang.
import pytest


@pytest.mark.mpi(min_size=2)
def test_rank_one_fails(comm):
    assert comm.rank != 1, "deliberate failure on rank 1 (pyhpc harness check)"


@pytest.mark.mpi(min_size=2)
def test_collective_after_failure(comm):
    comm.Barrier()
