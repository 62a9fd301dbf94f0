"""The update codec, versions 1 and 2: round trips equal the oracle pipeline, exact bit
accounting, entropy-coded top-k with error feedback, and hostile bytes (random, truncated,
flipped, empty, trailing), property-based."""

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refsim.compress import Codec, QSGDConfig, QuantizerConfig, TopKConfig, decode, report
from refsim.compress.bitpack import pack_naive
from refsim.compress.huffman import encode_naive
from refsim.compress.qsgd import qsgd_dequantize, qsgd_naive
from refsim.compress.quantize import dequantize_naive, quantize_naive
from refsim.compress.rng import tensor_key
from refsim.compress.tff_bits import TFF_TUTORIAL_CNN_SIZES, tff_tensor_bits
from refsim.compress.topk import topk_naive

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _update(rng):
    """A small client update: float32 tensors of odd shapes, one float64, one scalar, one empty."""
    return [rng.normal(0, 0.01, (13, 7)).astype(np.float32), rng.normal(0, 1, 40),
            np.array(0.5, np.float32), np.zeros((0, 4), np.float32),
            rng.normal(0, 0.01, 301).astype(np.float32)]


CODECS = [Codec(), Codec(QuantizerConfig(8)), Codec(QuantizerConfig(3, stochastic=False)),
          Codec(QuantizerConfig(12), huffman=True), Codec(QSGDConfig(5), huffman=True),
          Codec(QSGDConfig(300)), Codec(TopKConfig(6)), Codec(QuantizerConfig(2), threshold=50),
          Codec(QuantizerConfig(2), huffman=True, block=4),
          Codec(QuantizerConfig(3, stochastic=False), huffman=True, block=5),
          Codec(QuantizerConfig(12), huffman=True, version=1),
          Codec(QSGDConfig(5), huffman=True, version=1),
          Codec(QuantizerConfig(2), huffman=True, block=4, version=1),
          Codec(TopKConfig(6), version=1), Codec(TopKConfig(fraction=0.1), huffman=True),
          Codec(TopKConfig(fraction=0.05, bits=8), huffman=True),
          Codec(TopKConfig(k=9, bits=3, stochastic=False), huffman=True),
          Codec(TopKConfig(k=200, bits=12), huffman=True)]


def _oracle(codec, x, key):
    """What decode(encode(.)) must return for one tensor, from the NumPy oracles."""
    m = codec.method
    if m is None or x.size <= codec.threshold:
        return x
    if isinstance(m, QuantizerConfig):
        return dequantize_naive(quantize_naive(x, m.bits, stochastic=m.stochastic, seed=key))
    if isinstance(m, QSGDConfig):
        return qsgd_dequantize(qsgd_naive(x, m.levels, seed=key))
    sp = topk_naive(x, m.k_for(x.size))
    values = sp.values
    if codec.huffman and m.bits and values.size:  # quantized magnitudes, signs kept
        mag = dequantize_naive(quantize_naive(np.abs(values), m.bits, stochastic=m.stochastic,
                                              seed=key))
        values = np.where(values < 0, -mag, mag).astype(x.dtype)
    out = np.zeros(x.size, x.dtype)
    out[sp.indices] = values
    return out.reshape(x.shape)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_roundtrip_equals_oracle_pipeline(codec):
    tensors = _update(np.random.default_rng(1))
    data = codec.encode(tensors, seed=42)
    out = codec.decode(data)
    assert len(out) == len(tensors)
    for j, (x, y) in enumerate(zip(tensors, out)):
        ref = _oracle(codec, x, tensor_key(42, j))
        assert isinstance(ref, np.ndarray), f"oracle of tensor {j}"
        assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == x.dtype, j
        np.testing.assert_array_equal(y, ref, err_msg=f"{codec} tensor {j}")
    assert decode(data)[0].shape == (13, 7)


def test_payload_bytes_are_the_oracle_bytes():
    x = np.random.default_rng(2).normal(0, 0.01, 500).astype(np.float32)
    key = tensor_key(9, 0)
    q = quantize_naive(x, 4, seed=key)
    packed = Codec(QuantizerConfig(4)).encode([x], seed=9)
    assert packed.endswith(pack_naive(q.levels, 4).tobytes())
    for version in (1, 2):
        huff = Codec(QuantizerConfig(4), huffman=True, version=version).encode([x], seed=9)
        assert huff[:4] == b"RSC" + bytes([version])
        assert huff.endswith(encode_naive(q.levels, version=version))


def test_bit_accounting_and_entropy():
    x = np.random.default_rng(3).normal(0, 0.01, 30_000).astype(np.float32)
    small = np.ones(10, np.float32)
    codec = Codec(QuantizerConfig(8), threshold=20_000)
    data = codec.encode([x, small], seed=1)
    rep = report(data)
    assert rep.total_bits == 8 * len(data)
    q, ident = rep.tensors
    assert (q.method, ident.method) == ("quantize", "identity")
    assert q.payload_bits == 8 * 30_000 and ident.payload_bits == 32 * 10
    # refsim's format vs TFF's count for the same update: only headers and TFF's 28/32 differ.
    assert rep.total_bits - (q.payload_bits + ident.payload_bits) < 8 * 100
    assert tff_tensor_bits(30_000) > q.payload_bits
    # Huffman payload is within [H, H + 1) bits per symbol (+ padding) of the same levels.
    hrep = report(Codec(QuantizerConfig(8), huffman=True).encode([x], seed=1)).tensors[0]
    assert hrep.entropy_bits_per_symbol == pytest.approx(q.entropy_bits_per_symbol)
    h = hrep.entropy_bits_per_symbol * hrep.num_symbols
    assert h <= hrep.payload_bits < h + hrep.num_symbols + 8 * 600  # + code table


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="1.66M elements are slow without the JIT")
def test_tff_tutorial_cnn_in_refsim_bits():
    rng = np.random.default_rng(4)
    tensors = [rng.normal(0, 0.01, n).astype(np.float32) for n in TFF_TUTORIAL_CNN_SIZES]
    data = Codec(QuantizerConfig(8), threshold=20_000).encode(tensors, seed=0)
    levels, raw = 8 * (51_200 + 1_605_632), 32 * 6_538
    headers = 8 * (8 + 6 * (4 + 8 + 8) + 2 * (4 + 8 + 1 + 1 + 4 + 4 + 8))  # formats.md §2
    assert 8 * len(data) == levels + raw + headers == 13_465_376


def test_blocks_beat_one_bit_per_level():
    # 2-bit levels of a Gaussian: entropy ~1.1 bits, but Huffman pays >= 1 bit per level
    # unless 4 levels are coded as one 8-bit symbol.
    x = np.random.default_rng(5).normal(0, 0.01, 40_000).astype(np.float32)
    plain = report(Codec(QuantizerConfig(2), huffman=True).encode([x], seed=3)).tensors[0]
    block = report(Codec(QuantizerConfig(2), huffman=True, block=4).encode([x], seed=3)).tensors[0]
    h_level = plain.entropy_bits_per_symbol
    assert plain.payload_bits > 1.2 * h_level * x.size
    assert h_level * x.size <= 4 * block.entropy_bits_per_symbol * block.num_symbols + 1e-6
    assert block.payload_bits < 1.05 * h_level * x.size + 8 * 300
    assert block.num_symbols == 10_000


def test_topk_error_feedback_through_codec():
    codec = Codec(TopKConfig(2))
    x = [np.array([3.0, 1.0, 0.5, -2.0])]
    data, res = codec.encode_with_residual(x, None)
    assert codec.decode(data)[0].tolist() == [3.0, 0.0, 0.0, -2.0]
    assert res[0].tolist() == [0.0, 1.0, 0.5, 0.0]
    data2, res2 = codec.encode_with_residual([np.array([0.0, 0.6, 0.0, 0.0])], res)
    assert codec.decode(data2)[0].tolist() == [0.0, 1.6, 0.5, 0.0]


def test_bad_configs_and_tensors():
    with pytest.raises(ValueError, match="version 2"):
        Codec(TopKConfig(3), huffman=True, version=1)
    with pytest.raises(ValueError, match="huffman=True"):
        Codec(TopKConfig(3, bits=4))
    with pytest.raises(ValueError, match="raw floats"):
        Codec(None, huffman=True)
    with pytest.raises(ValueError, match="version must be"):
        Codec(version=3)
    with pytest.raises(ValueError, match="exactly one"):
        TopKConfig(k=3, fraction=0.5)
    with pytest.raises(ValueError, match="fraction"):
        TopKConfig(fraction=1.5)
    with pytest.raises(TypeError, match="method"):
        Codec("quantize")
    with pytest.raises(ValueError, match="block"):
        Codec(QuantizerConfig(2), block=4)
    with pytest.raises(ValueError, match="block"):
        Codec(QuantizerConfig(6), huffman=True, block=3)
    with pytest.raises(TypeError, match="float32 or float64"):
        Codec().encode([np.arange(3)])
    with pytest.raises(ValueError, match="NaN"):
        Codec().encode([np.array([np.nan], np.float32)])


def test_hostile_headers():
    good = Codec(QuantizerConfig(8)).encode([np.ones(5, np.float32)])
    huge = bytearray(good)
    huge[12:20] = (2**40).to_bytes(8, "little")  # shape[0] of tensor 0
    with pytest.raises(ValueError, match="max_elements"):
        decode(bytes(huge))
    with pytest.raises(ValueError, match="magic"):
        decode(b"XYZ" + good[3:])
    with pytest.raises(ValueError, match="trailing"):
        decode(good + b"\x00")
    many = bytearray(good)
    many[4:8] = (2**31).to_bytes(4, "little")
    with pytest.raises(ValueError):
        decode(bytes(many))


def _valid(seed):
    rng = np.random.default_rng(seed)
    return CODECS[seed % len(CODECS)].encode(_update(rng)[:3], seed=seed)


def _decode_or_valueerror(data):
    try:
        out = decode(data)
    except ValueError:
        return
    assert all(isinstance(a, np.ndarray) for a in out)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    _decode_or_valueerror(data)
    _decode_or_valueerror(b"RSC\x01" + data)
    _decode_or_valueerror(b"RSC\x02" + data)
    _decode_or_valueerror(b"RSC\x02\x01\x00\x00\x00\x04\x01\x00\x01" + data)  # a top-k record


def test_empty_and_trailing_bytes_are_named():
    for bad, what in [(b"", "bad magic"), (b"RSC", "truncated"), (_valid(14) + b"\x00",
                                                                 "trailing")]:
        with pytest.raises(ValueError, match=what):
            decode(bad)


@FUZZ
@given(st.integers(0, 10_000), st.data())
def test_fuzz_truncation_and_bit_flips(seed, draw):
    data = _valid(seed)
    cut = draw.draw(st.integers(0, len(data) - 1))
    with pytest.raises(ValueError):
        decode(data[:cut])
    with pytest.raises(ValueError):
        decode(data + draw.draw(st.binary(min_size=1, max_size=3)))
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        bit = draw.draw(st.integers(0, 8 * len(buf) - 1))
        buf[bit // 8] ^= 1 << (bit % 8)
    _decode_or_valueerror(bytes(buf))


def test_versions_do_not_mix():
    x = [np.random.default_rng(7).normal(0, 1, 50).astype(np.float32)]
    v1 = bytearray(Codec(QuantizerConfig(4), huffman=True, version=1).encode(x))
    v2 = bytearray(Codec(QuantizerConfig(4), huffman=True).encode(x))
    np.testing.assert_array_equal(decode(bytes(v1))[0], decode(bytes(v2))[0])
    v1[3], v2[3] = 2, 1  # the stream's version no longer matches its Huffman payload
    for bad in (v1, v2):
        with pytest.raises(ValueError, match="Huffman stream"):
            decode(bytes(bad))
    topk = bytearray(Codec(TopKConfig(5), huffman=True).encode(x))
    topk[3] = 1  # method 4 exists in version 2 only
    with pytest.raises(ValueError, match="unknown method 4"):
        decode(bytes(topk))


def test_entropy_coded_topk_error_feedback_and_bits():
    """What is sent plus the new residual is the input plus the old residual (the values'
    quantization error is fed back too); the report splits the bits."""
    rng = np.random.default_rng(8)
    codec = Codec(TopKConfig(fraction=0.01, bits=6), huffman=True)
    x = [rng.normal(0, 0.01, (120, 90)).astype(np.float32)]
    res = None
    for t in range(3):
        data, new = codec.encode_with_residual(x, res, seed=t)
        sent = codec.decode(data)[0]
        np.testing.assert_allclose(sent + new[0], x[0] + (0 if res is None else res[0]),
                                   rtol=1e-6, atol=1e-9)
        res = new
    rep = report(data).tensors[0]
    assert rep.method == "topk_coded" and rep.nonzeros == 108 and rep.num_symbols == 108
    assert rep.index_bits + 8 * 4 < rep.payload_bits  # the rest are the values
    assert rep.index_entropy_bits == pytest.approx(np.log2(float(
        __import__("math").comb(10800, 108))))
    assert report(data).entropy_bound_bits == pytest.approx(
        rep.index_entropy_bits + rep.num_symbols * rep.entropy_bits_per_symbol)
