"""Shared fixtures: the array module under test and where a CUDA kernel runs (tolerances live
in tests/checks.py)."""

import pytest
from cuda_emulator import compiler, emulated_launch

from refsim.backend import available_backends, get_xp
from refsim.cuda_launch import cupy_launch

# A CPU stand-in for CuPy, used only when put on PYTHONPATH on purpose (docs/gpu.md); never
# collected, so that ``import cupy`` keeps meaning the real one.
# tff_side/ runs in TFF's own venv (tests/tff_job.py): refsim's venv cannot import it.
collect_ignore = ["fake_cupy", "tff_side"]


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Each test that takes ``xp`` runs on NumPy, and on CuPy where a GPU is present."""
    if request.param not in available_backends():
        pytest.skip("CuPy with a CUDA device is not available")
    return get_xp(request.param)



@pytest.fixture(params=["emulated", pytest.param("cupy", marks=pytest.mark.gpu)])
def kernel_target(request):
    """(to_device, launch) for a test of one of refsim's CUDA kernels: the kernel source run on
    the CPU by tests/cuda_emulator.py, and on a GPU where CuPy sees one. ``to_device`` moves a
    NumPy array to where the kernel runs; ``launch`` is the launcher to pass."""
    if request.param == "emulated":
        if compiler() is None:
            pytest.skip("no C++ compiler to emulate the CUDA kernels")
        return (lambda a: a), emulated_launch
    if "cupy" not in available_backends():
        pytest.skip("CuPy with a CUDA device is not available")
    return get_xp("cupy").asarray, cupy_launch
