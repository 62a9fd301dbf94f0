"""refsim.nn.cuda's kernels against their NumPy oracles.

Each test runs one kernel through a *launch*: ``emulated`` runs the CUDA C source on the CPU
(``tests/cuda_emulator.py``, needs a C++ compiler), ``cupy`` runs it on a GPU (marked gpu,
skipped without CuPy and a device). Data movement and integer results must agree bit for bit;
sums and the softmax within the tolerances stated at each test.
"""

import math
import shutil
import subprocess

import numpy as np
import pytest

from cuda_emulator import emulated_launch
from refsim.backend import to_numpy
from refsim.compress import quantize_cuda
from refsim.nn.activation import relu_forward
from refsim.nn.conv import conv_output_size, conv_padding
from refsim.nn.cuda import elementwise, im2col, loss, pool
from refsim.nn.im2col import col2im_slices, im2col_slices
from refsim.nn.loss import softmax_cross_entropy
from refsim.nn.pool import maxpool2d_backward_naive, maxpool2d_forward_naive, pool_output_size

SOURCES = {"im2col": im2col.SOURCE, "pool": pool.SOURCE, "elementwise": elementwise.SOURCE,
           "loss": loss.SOURCE, "quantize": quantize_cuda.SOURCE}
DTYPES = [np.float32, np.float64]


def _same_bits(a, b):
    a, b = np.ascontiguousarray(to_numpy(a)), np.ascontiguousarray(to_numpy(b))
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_and_col2im_equal_the_slice_oracles_bit_for_bit(kernel_target, seed, dtype):
    dev, launch = kernel_target
    rng = np.random.default_rng(seed)
    N, C = (int(v) for v in rng.integers(1, 5, 2))
    H, W = (int(v) for v in rng.integers(3, 9, 2))
    K = min(int(rng.integers(1, 6)), H, W)  # fits every padding
    padding = ["valid", "same", int(rng.integers(0, 3))][seed % 3]
    before = conv_padding(K, padding)[0]
    Ho, Wo = conv_output_size(H, K, padding), conv_output_size(W, K, padding)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    cols = im2col.im2col_cuda(dev(x), K, before, Ho, Wo, launch=launch)
    _same_bits(cols, im2col_slices(x, K, before, Ho, Wo))
    g = rng.standard_normal(cols.shape).astype(dtype)  # a cols-shaped gradient
    _same_bits(im2col.col2im_cuda(dev(g), x.shape, before, launch=launch),
               col2im_slices(g, x.shape, before))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_maxpool_equals_the_loop_oracle_bit_for_bit_ties_included(kernel_target, seed, padding):
    dev, launch = kernel_target
    rng = np.random.default_rng(seed)
    N, C, H, W = (int(v) for v in rng.integers(1, 4, 2).tolist() + rng.integers(2, 10, 2).tolist())
    dtype = DTYPES[seed % 2]
    x = rng.integers(-2, 3, (N, C, H, W)).astype(dtype)  # few values: many ties
    if seed == 0:
        x[...] = 0.0  # every window a four-way tie: tap 0 must win
    Ho, Wo = pool_output_size(H, padding), pool_output_size(W, padding)
    y, argmax = pool.maxpool2d_forward_cuda(dev(x), Ho, Wo, launch=launch)
    y_ref, cache = maxpool2d_forward_naive(x, padding)
    _same_bits(y, y_ref)
    _same_bits(argmax, cache.argmax)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dy[0, 0, 0, 0] = -0.0
    dx = pool.maxpool2d_backward_cuda(dev(dy), argmax, x.shape, launch=launch)
    _same_bits(dx, maxpool2d_backward_naive(dy, cache))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gives_numpys_bits_for_signed_zeros_nan_and_inf(kernel_target, dtype):
    dev, launch = kernel_target
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(997),
                        [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -1e-30]]).astype(dtype)
    x = x.reshape(4, 251)
    y, mask = elementwise.relu_forward_cuda(dev(x), launch=launch)
    y_ref, mask_ref = relu_forward(x)
    _same_bits(y, y_ref)
    _same_bits(mask, mask_ref)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy[0, :5] = [-1.0, -0.0, np.inf, -np.inf, np.nan]
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN on both sides
        dx_ref = dy * mask_ref
    _same_bits(elementwise.relu_backward_cuda(dev(dy), mask, launch=launch), dx_ref)


@pytest.mark.parametrize("shape,axis", [((7, 5), 1), ((5, 3, 4, 4), 0), ((2, 3, 7), 1),
                                        ((1, 1), 1), ((600, 10), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_add_is_numpys_broadcast_add_bit_for_bit(kernel_target, shape, axis, dtype):
    dev, launch = kernel_target
    rng = np.random.default_rng(len(shape) + axis)
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[axis]).astype(dtype)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    _same_bits(elementwise.bias_add_cuda(dev(z), dev(b), axis, launch=launch), z + b.reshape(view))


@pytest.mark.parametrize("shape,axis", [((7, 5), 1), ((32, 600, 24, 24), 0), ((3, 4, 1000), 1),
                                        ((1, 1), 0), ((0, 4), 1), ((513, 3), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_sums_are_within_the_recursive_summation_bound(kernel_target, shape, axis, dtype):
    """|kernel - exact| <= (SUM_CHUNK + chunks) * eps * sum |dy| for each channel, where exact is
    math.fsum of the float64 values; and the result does not depend on the grid."""
    dev, launch = kernel_target
    if math.prod(shape) > 2_000_000 and launch is emulated_launch:
        shape = (4, 600, 24, 24)  # the emulator runs one thread at a time
    rng = np.random.default_rng(sum(shape))
    dy = rng.standard_normal(shape).astype(dtype)
    out = to_numpy(elementwise.channel_sum_cuda(dev(dy), axis, launch=launch))
    moved = np.moveaxis(dy, axis, 0).reshape(shape[axis], -1).astype(np.float64)
    chunks = max(1, -(-moved.shape[1] // elementwise.SUM_CHUNK))
    eps = np.finfo(dtype).eps
    for c in range(shape[axis]):
        exact = math.fsum(moved[c])
        bound = (elementwise.SUM_CHUNK + chunks) * eps * np.abs(moved[c]).sum()
        assert abs(float(out[c]) - exact) <= bound
    if launch is emulated_launch and dy.size < 100_000:
        other = np.ascontiguousarray(dy)
        def one_thread(*a):
            emulated_launch(*a, grid=(1, 1))
        _same_bits(elementwise.channel_sum_cuda(other, axis, launch=one_thread), out)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-12, 1e-15), (np.float32, 2e-6, 2e-7)])
def test_softmax_cross_entropy_matches_the_oracle_within_rounding(kernel_target, seed, dtype,
                                                                  rtol, atol):
    """float64: rtol 1e-12; float32: rtol 2e-6, atol 2e-7 (exp/log of two libraries)."""
    dev, launch = kernel_target
    rng = np.random.default_rng(seed)
    N, K = int(rng.integers(1, 700)), int(rng.integers(2, 63))
    z = (rng.standard_normal((N, K)) * [1, 5, 30, 0.01, 100][seed]).astype(dtype)
    y = rng.integers(0, K, N)
    L, dz = loss.softmax_cross_entropy_cuda(dev(z), dev(y), launch=launch)
    L_ref, dz_ref = softmax_cross_entropy(z, y)
    assert L.shape == () and L.dtype == np.float64
    np.testing.assert_allclose(float(L), L_ref, rtol=rtol * 10, atol=atol)
    np.testing.assert_allclose(to_numpy(dz), dz_ref, rtol=rtol, atol=atol / N)


def test_softmax_kernel_turns_a_bad_label_into_nan_without_reading_outside(kernel_target):
    dev, launch = kernel_target
    z = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, -1, 3, 2**40])
    L, dz = loss.softmax_cross_entropy_cuda(dev(z), dev(y), launch=launch)
    dz = to_numpy(dz)
    assert np.isnan(float(L))
    assert np.isfinite(dz[0]).all() and np.isnan(dz[1:]).all()


def test_launchers_refuse_shapes_the_kernels_would_read_outside_of(kernel_target):
    dev, launch = kernel_target
    x = np.zeros((1, 1, 5, 4), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        pool.maxpool2d_forward_cuda(dev(x), 4, 2, launch=launch)  # rows 2*3 >= 5
    with pytest.raises(ValueError, match="at least one class"):
        loss.softmax_cross_entropy_cuda(dev(np.zeros((2, 0))), dev(np.zeros(2, np.int64)),
                                        launch=launch)
    with pytest.raises(ValueError, match="bias must be"):
        elementwise.bias_add_cuda(dev(np.zeros((2, 3))), dev(np.zeros(2)), 1, launch=launch)
    with pytest.raises(ValueError, match="mask must be bool"):
        elementwise.relu_backward_cuda(dev(np.zeros(3)), dev(np.ones(3)), launch=launch)


def test_empty_work_launches_nothing(kernel_target):
    dev, launch = kernel_target
    x = np.zeros((0, 3), np.float32)
    y, mask = elementwise.relu_forward_cuda(dev(x), launch=launch)
    assert y.shape == (0, 3) and mask.shape == (0, 3)


def test_launch_rejects_integer_arrays():
    with pytest.raises(TypeError, match="float32 or float64"):
        emulated_launch(elementwise.SOURCE, "refsim_relu_forward", np.int32, 1)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("real", ["float", "double"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_source_compiles_for_hopper_with_nvcc(tmp_path, name, real):
    """The CUDA C that CuPy compiles with NVRTC also compiles with nvcc for sm_90 (H100/H200),
    warnings included: a syntax or type error shows here without a GPU."""
    src = tmp_path / f"{name}.cu"
    src.write_text(SOURCES[name])
    out = subprocess.run(["nvcc", "-std=c++14", "-arch=sm_90", "-cubin", f"-Dreal_t={real}",
                          "-Werror", "all-warnings", str(src), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
