"""Shared fixtures: the array module under test and the tolerance rule."""

import numpy as np
import pytest

from refsim.backend import available_backends, get_xp


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Each test that takes ``xp`` runs on NumPy, and on CuPy where a GPU is present."""
    if request.param not in available_backends():
        pytest.skip("CuPy with a CUDA device is not available")
    return get_xp(request.param)


def tolerance(dtype) -> dict:
    """The one rule for float comparisons: |a - b| <= atol + rtol * |b|, by dtype."""
    if np.dtype(dtype) == np.float64:
        return {"rtol": 1e-10, "atol": 1e-12}
    return {"rtol": 1e-4, "atol": 1e-6}
