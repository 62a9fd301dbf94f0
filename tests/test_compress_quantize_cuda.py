"""refsim.compress.quantize_cuda against the Numba quantizer (its oracle), bit for bit.

Run through the CPU emulator of the CUDA source (tests/cuda_emulator.py) and, marked gpu, on a
device: every level, lo and hi must equal ``refsim.compress.quantize.quantize``'s, for both
dtypes, every bit width class, stochastic and deterministic rounding, keys above 2**63, and
the edge cases (empty, one element, constant, extreme values).
"""

import numpy as np
import pytest

from refsim.backend import available_backends, get_xp
from refsim.compress.quantize import quantize
from refsim.compress.quantize_cuda import quantize_cuda


def _same(got, ref):
    assert got.levels.dtype == ref.levels.dtype and got.levels.shape == ref.levels.shape
    np.testing.assert_array_equal(got.levels, ref.levels)
    assert (got.min, got.max, got.bits, got.dtype) == (ref.min, ref.max, ref.bits, ref.dtype)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("stochastic", [True, False])
def test_levels_equal_the_numba_quantizer_bit_for_bit(kernel_target, seed, stochastic):
    dev, launch = kernel_target
    rng = np.random.default_rng(seed)
    dtype = [np.float32, np.float64][seed % 2]
    bits = [1, 2, 3, 7, 8, 9, 12, 16][seed]
    shape = tuple(int(s) for s in rng.integers(1, 40, size=1 + seed % 3))
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6)).astype(dtype)
    key = int(rng.integers(0, 2**63)) * 2 + seed % 2  # keys above 2**63 too
    got = quantize_cuda(dev(x), bits, stochastic=stochastic, seed=key, launch=launch)
    _same(got, quantize(x, bits, stochastic=stochastic, seed=key))


@pytest.mark.parametrize("x", [np.zeros(0, np.float32), np.array([3.5]), np.full(7, -2.0),
                               np.array([np.finfo(np.float64).min / 4, 0.0,
                                         np.finfo(np.float64).max / 4]),
                               np.array([1.0, 1.0 + 2**-52, 1.0 + 2**-51]),
                               np.array([0.0, 0.25, 0.75, 1.25, 1.75, 3.5])])  # t = k + 1/2
def test_edge_cases_equal_the_oracle(kernel_target, x):
    dev, launch = kernel_target
    for bits in (3, 8):  # 3 bits: scale 2 puts t exactly halfway for the last case
        for stochastic in (True, False):
            _same(quantize_cuda(dev(x), bits, stochastic=stochastic, seed=2**64 - 1,
                                launch=launch),
                  quantize(x, bits, stochastic=stochastic, seed=2**64 - 1))


def test_bad_input_gets_the_oracles_errors(kernel_target):
    dev, launch = kernel_target
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_cuda(dev(np.array([1.0, np.nan])), 8, launch=launch)
    with pytest.raises(ValueError, match="bits"):
        quantize_cuda(dev(np.ones(3)), 17, launch=launch)
    with pytest.raises(TypeError, match="float32 or float64"):
        quantize_cuda(dev(np.ones(3, np.int32)), 8, launch=launch)
    with pytest.raises(TypeError, match="stochastic"):
        quantize_cuda(dev(np.ones(3)), 8, stochastic=1, launch=launch)
    with pytest.raises(ValueError, match="seed"):
        quantize_cuda(dev(np.ones(3)), 8, seed=2**64, launch=launch)


@pytest.mark.gpu
@pytest.mark.skipif("cupy" not in available_backends(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("huffman", [True, False])
def test_codec_bytes_do_not_depend_on_where_the_tensors_live(huffman):
    """Quantized on the device, coded on the host: the same bytes as all on the host."""
    from refsim.compress import Codec, QuantizerConfig
    cp = get_xp("cupy")
    rng = np.random.default_rng(5)
    tensors = [rng.standard_normal((30, 20)).astype(np.float32), np.ones(3, np.float32),
               rng.standard_normal(5000)]
    codec = Codec(QuantizerConfig(6), huffman=huffman)
    assert codec.encode([cp.asarray(t) for t in tensors], seed=9) == codec.encode(tensors, seed=9)
