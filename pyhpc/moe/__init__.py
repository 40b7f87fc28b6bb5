"""ExFlow-style mixture-of-experts expert parallelism (``pyhpc.moe``).

- :mod:`~pyhpc.moe.traces`: routing traces, their inter-layer affinity, a
  calibrated trace generator and the real co-occurrence data loader;
- :mod:`~pyhpc.moe.placement`: balanced expert placement (heuristic, exact ILP,
  contiguous, random) and its evaluation;
- :mod:`~pyhpc.moe.runtime`: a stack of MoE layers over MPI, in classic expert
  parallelism (dispatch + combine all-to-all per layer) or ExFlow's
  context-coherent mode (one all-to-all per layer).

Placement needs scipy (``pip install 'pyhpc[moe]'``).
"""

from .runtime import MODES, MoEConfig, MoEStack, ReferenceStack
from .placement import METHODS, Placement, evaluate, load_imbalance, place_experts
from .traces import (Affinity, GeneratorParams, affinity, calibrate, check_trace, generate_trace,
                     load_cooccurrence, load_trace, real_data_dir, save_trace, transition_matrices)

__all__ = ["METHODS", "MODES", "MoEConfig", "MoEStack", "ReferenceStack", "Affinity", "GeneratorParams", "Placement", "affinity", "calibrate", "check_trace",
           "evaluate", "generate_trace", "load_imbalance", "load_cooccurrence", "load_trace", "place_experts", "real_data_dir", "save_trace",
           "transition_matrices"]
