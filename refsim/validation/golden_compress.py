"""Golden vectors of update compression: quantization with its uniforms, Huffman, the codec.

* ``quantize.npz``: the counter-based SplitMix64 uniforms (raw 64-bit outputs and u_i) for four
  keys, ``quantize_key`` and ``tensor_key``; uniform b-bit quantization (stochastic and
  round-half-even) of one float64 vector for b = 1, 2, 3, 4, 8, 12, 16 and of one float32
  vector for b = 4, 8, with the uniforms it used and the dequantized values; round-half-even on
  exact ties; QSGD with s = 1, 4, 127. Semantics: ``docs/compression.md`` sections 1-3.
* ``huffman.npz``: canonical code lengths, codewords and the exact encoded bytes of six fixed
  symbol streams in both stream versions (``docs/formats.md`` sections 1 and 2; ``<case>.*``
  version 1, ``v2.<case>.encoded`` version 2), from the example of the format spec to an
  empty stream, a single symbol, a sparse uint16 table and Fibonacci counts (long codes).
* ``codec.npz``: the exact bytes of ``Codec.encode`` for one small three-tensor update under
  ten codecs in codec version 1 (``<case>.*``) and version 2 (``v2.<case>.encoded``), two
  entropy-coded top-k codecs (version 2 only), and what ``Codec.decode`` returns
  (``docs/formats.md`` section 3).

Every array here is exact: integers, bytes, and floats that are at most two IEEE operations
away from exactly specified integers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refsim.compress import (Codec, QSGDConfig, QuantizerConfig, TopKConfig, dequantize, huffman,
                             qsgd, qsgd_dequantize, quantize, quantize_key, tensor_key)
from refsim.compress.huffman_code import canonical_codes, code_lengths
from refsim.compress.rng import splitmix64_naive, uniform_naive
from refsim.validation.golden_inputs import fixed_integers, fixed_uniform

__all__ = ["quantize_vectors", "huffman_vectors", "codec_vectors"]

RNG_KEYS = (0, 1, 0x0123456789ABCDEF, 2**64 - 1)
QUANTIZE_SEED = 0xDEADBEEF
BITS = (1, 2, 3, 4, 8, 12, 16)
QSGD_LEVELS = (1, 4, 127)
CODEC_SEED = 77
CODECS = {  # case -> (codec, dtype of the update); written in codec versions 1 and 2
    "identity": (Codec(None), np.float32),
    "quant8": (Codec(QuantizerConfig(8)), np.float32),
    "quant3_nearest": (Codec(QuantizerConfig(3, stochastic=False)), np.float32),
    "quant4_huffman": (Codec(QuantizerConfig(4), huffman=True), np.float32),
    "quant2_huffman_block4": (Codec(QuantizerConfig(2), huffman=True, block=4), np.float32),
    "qsgd4_huffman": (Codec(QSGDConfig(4), huffman=True), np.float32),
    "qsgd1": (Codec(QSGDConfig(1)), np.float32),
    "topk3": (Codec(TopKConfig(3)), np.float32),
    "quant8_threshold5": (Codec(QuantizerConfig(8), threshold=5), np.float32),
    "quant8_float64": (Codec(QuantizerConfig(8)), np.float64),
}
CODECS_V2 = {  # version 2 only: entropy-coded top-k (method 4)
    "topk4_coded": (Codec(TopKConfig(4), huffman=True), np.float32),
    "topk_half_bits3": (Codec(TopKConfig(fraction=0.5, bits=3), huffman=True), np.float32),
}


def _quantized(prefix: str, x: np.ndarray, bits: int, seed: int) -> dict[str, np.ndarray]:
    sto = quantize(x, bits, stochastic=True, seed=seed)
    near = quantize(x, bits, stochastic=False)
    return {f"{prefix}.stochastic_levels": sto.levels,
            f"{prefix}.stochastic_values": dequantize(sto),
            f"{prefix}.nearest_levels": near.levels,
            f"{prefix}.nearest_values": dequantize(near)}


def quantize_vectors() -> dict[str, np.ndarray]:
    """See the module docstring; array names are listed in ``docs/golden.md``."""
    keys = np.array(RNG_KEYS, np.uint64)  # (4,)
    out = {"rng.keys": keys,
           "rng.raw": np.stack([splitmix64_naive(int(k), np.arange(16)) for k in keys]),  # (4, 16)
           "rng.uniforms": np.stack([uniform_naive(int(k), 0, 16) for k in keys])}  # (4, 16)
    args = np.array([[0, 1, 0], [5, 3, 17], [2**32 - 1, 1000, 99]], np.int64)  # (3, 3)
    out["quantize_key.seed_round_client"] = args
    out["quantize_key.keys"] = np.array([quantize_key(*map(int, a)) for a in args], np.uint64)
    out["tensor_key.key"] = np.uint64(RNG_KEYS[2])
    out["tensor_key.keys"] = np.array([tensor_key(RNG_KEYS[2], j) for j in range(4)], np.uint64)

    x = fixed_uniform(1301, (40,))  # (n,) float64
    out.update({"seed": np.uint64(QUANTIZE_SEED), "x": x, "u": uniform_naive(QUANTIZE_SEED, 0, 40),
                "min": np.float64(x.min()), "max": np.float64(x.max())})
    for b in BITS:
        out.update(_quantized(f"b{b}", x, b, QUANTIZE_SEED))
    x32 = fixed_uniform(1302, (40,)).astype(np.float32)  # (n,) float32
    out.update({"f32.x": x32, "f32.min": np.float64(x32.min()), "f32.max": np.float64(x32.max())})
    for b in (4, 8):
        out.update(_quantized(f"f32.b{b}", x32, b, QUANTIZE_SEED))
    ties = np.array([0.0, 0.5, 1.5, 2.5, 3.0, 1.0, 2.0, 0.25])  # 2 bits: t_i = x_i exactly
    near = quantize(ties, 2, stochastic=False)
    out.update({"ties.x": ties, "ties.nearest_levels": near.levels})
    for s in QSGD_LEVELS:
        q = qsgd(x, s, seed=QUANTIZE_SEED)
        out.update({f"qsgd.s{s}.symbols": q.symbols, f"qsgd.s{s}.values": qsgd_dequantize(q)})
    out["qsgd.norm"] = np.float64(qsgd(x, 1, seed=QUANTIZE_SEED).norm)
    return out


def _huffman_inputs() -> dict[str, np.ndarray]:
    u = fixed_uniform(1401, (301,), 0.0, 1.0)  # (301,)
    table16 = np.array([7, 7, 7, 7, 300, 300, 300, 4096, 4096, 65535], np.uint16)
    fib = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89])  # counts of symbols 0..10
    fib_symbols = np.repeat(np.arange(11, dtype=np.uint8), fib)  # (232,) grouped
    shuffle = np.argsort(fixed_uniform(1403, fib_symbols.shape), kind="stable")  # (232,)
    return {
        "doc": np.array([3, 3, 3, 1, 0], np.uint8),  # the example of docs/formats.md
        "skewed8": np.floor(8.0 * (u * u * u)).astype(np.uint8),  # mostly 0, values 0..7
        "sparse16": table16[fixed_integers(1402, (50,), 0, 10)],  # sparse table, width 2
        "single": np.full(9, 42, np.uint8),  # one distinct symbol: code length 1
        "empty": np.zeros(0, np.uint8),  # n = 0: the 10-byte header only
        "fib": fib_symbols[shuffle],  # Fibonacci counts: code lengths up to 10
    }


def huffman_vectors() -> dict[str, np.ndarray]:
    """Per case c: c.symbols, c.code_symbols (m,), c.code_lengths (m,) uint8, c.codewords (m,)
    uint32 (canonical), c.encoded (L,) uint8 = the bytes of ``huffman.encode(version=1)``,
    v2.c.encoded = those of ``huffman.encode`` (version 2; the same code lengths)."""
    out = {}
    for case, symbols in _huffman_inputs().items():
        lengths = code_lengths(huffman.histogram(symbols))  # (A,) uint8, 0 = absent
        present = np.flatnonzero(lengths)  # (m,)
        out.update({
            f"{case}.symbols": symbols,
            f"{case}.code_symbols": present.astype(symbols.dtype),
            f"{case}.code_lengths": lengths[present],
            f"{case}.codewords": canonical_codes(lengths)[present],
            f"{case}.encoded": np.frombuffer(huffman.encode(symbols, version=1), np.uint8),
            f"v2.{case}.encoded": np.frombuffer(huffman.encode(symbols, version=2), np.uint8),
        })
    return out


def codec_vectors() -> dict[str, np.ndarray]:
    """seed, update.0 .. update.2 (float64 values of the three tensors), and per case c:
    c.encoded (L,) uint8 (codec version 1), c.decoded.0 .. c.decoded.2 (in the case's dtype),
    v2.c.encoded (version 2; it decodes to c.decoded.*); per version-2-only case c:
    v2.c.encoded and v2.c.decoded.0 .. v2.c.decoded.2."""
    update = [fixed_uniform(1501, (3, 4)), fixed_uniform(1502, (4,), -0.1, 0.3),
              fixed_uniform(1503, (2, 2, 3), -2.0, 0.5)]
    out = {"seed": np.uint64(CODEC_SEED)}
    out.update({f"update.{j}": t for j, t in enumerate(update)})
    for case, (codec, dtype) in CODECS.items():
        v1 = dataclasses.replace(codec, version=1)
        data = v1.encode([t.astype(dtype) for t in update], seed=CODEC_SEED)
        out[f"{case}.encoded"] = np.frombuffer(data, np.uint8)
        out.update({f"{case}.decoded.{j}": t for j, t in enumerate(v1.decode(data))})
        out[f"v2.{case}.encoded"] = np.frombuffer(
            codec.encode([t.astype(dtype) for t in update], seed=CODEC_SEED), np.uint8)
    for case, (codec, dtype) in CODECS_V2.items():
        data = codec.encode([t.astype(dtype) for t in update], seed=CODEC_SEED)
        out[f"v2.{case}.encoded"] = np.frombuffer(data, np.uint8)
        out.update({f"v2.{case}.decoded.{j}": t for j, t in enumerate(codec.decode(data))})
    return out
