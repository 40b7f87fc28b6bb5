"""Optional CUDA: import works without a GPU; GPU tests run only with one."""

from __future__ import annotations

import numpy as np
import pytest

from pyhpc import _build_info, cuda


def test_numpy_arrays_dispatch_to_numpy():
    assert cuda.array_module(np.zeros(3)) is np


def test_device_count_is_zero_or_more_without_raising():
    assert cuda.device_count() >= 0
    assert cuda.available() == (cuda.device_count() > 0)


def test_cuda_extension_present_exactly_when_built_with_cuda():
    assert (cuda.extension() is not None) == bool(_build_info.CUDA_ENABLED)


@pytest.mark.gpu
def test_device_info_and_copy_bandwidth():
    ext = cuda.extension()
    info = ext.device_info(0)
    assert info["total_memory"] > 0 and info["compute_capability"][0] >= 7
    seconds = ext.d2d_copy_seconds(0, 64 << 20, 5)
    assert len(seconds) == 5 and all(s > 0 for s in seconds)


@pytest.mark.gpu
def test_cupy_arrays_dispatch_to_cupy():
    cp = cuda.cupy()
    if cp is None:
        pytest.skip("cupy is not installed")
    assert cuda.array_module(cp.zeros(3)) is cp
