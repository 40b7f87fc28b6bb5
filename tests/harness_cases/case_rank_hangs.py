# Run by tests/test_harness.py under 2 ranks with a short --timeout: rank 1
# never reaches the barrier. The job must end with the timeout's stack dump.
import time

import pytest


@pytest.mark.mpi(min_size=2)
def test_rank_one_hangs(comm):
    if comm.rank == 1:
        while True:
            time.sleep(0.1)  # deliberate hang (pyhpc harness check)
    comm.Barrier()
