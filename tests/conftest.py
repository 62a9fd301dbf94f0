"""Shared fixtures: the array module under test (tolerances live in tests/checks.py)."""

import pytest

from refsim.backend import available_backends, get_xp

# A CPU stand-in for CuPy, used only when put on PYTHONPATH on purpose (docs/gpu.md); never
# collected, so that ``import cupy`` keeps meaning the real one.
collect_ignore = ["fake_cupy"]


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Each test that takes ``xp`` runs on NumPy, and on CuPy where a GPU is present."""
    if request.param not in available_backends():
        pytest.skip("CuPy with a CUDA device is not available")
    return get_xp(request.param)

