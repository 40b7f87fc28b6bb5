"""ccl_allreduce4: ccl_allreduce (pyhpc.ccl's ring all-reduce against gloo and
MPI_Allreduce) with 4 peers."""

from __future__ import annotations

import dataclasses

from .ccl_allreduce import BENCHMARK as _TWO

BENCHMARK = dataclasses.replace(_TWO, name="ccl_allreduce4", ranks=4,
                                description=_TWO.description.replace("ring all-reduce",
                                                                     "ring all-reduce, 4 peers", 1))
