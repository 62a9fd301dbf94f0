"""refsim.compress: update compression with bit-exact oracles and exact bit accounting.

Reading order: ``rng.py`` (the counter-based uniforms), ``quantize.py`` (uniform b-bit),
``qsgd.py``, ``topk.py``, ``bitpack.py``, ``huffman_code.py`` then ``huffman.py`` (the two stream
versions: ``huffman_v1.py``, ``huffman_v2.py`` with ``huffman_table.py``; their kernels in
``huffman_kernels.py``, ``huffman_build.py``, ``huffman_v2_*.py``), ``topk_code.py``,
``codec.py``, ``tff_bits.py``. The math and how other frameworks count bits:
``docs/compression.md``; byte formats: ``docs/formats.md``.

Note: ``refsim.compress.quantize`` is the function (the public API); the module of the same name
is ``importlib.import_module("refsim.compress.quantize")`` or ``from refsim.compress.quantize
import ...``.
"""

from refsim.compress import huffman
from refsim.compress.codec import Codec, CodecReport, TensorReport, decode, report
from refsim.compress.qsgd import QSGDConfig, QSGDQuantized, qsgd, qsgd_dequantize, qsgd_naive
from refsim.compress.quantize import (
    Quantized,
    QuantizerConfig,
    dequantize,
    dequantize_naive,
    quantize,
    quantize_naive,
)
from refsim.compress.rng import broadcast_key, quantize_key, tensor_key
from refsim.compress.tff_bits import tff_round_bits, tff_tensor_bits
from refsim.compress.topk import TopKConfig, TopKSparse, topk, topk_densify, topk_naive

__all__ = [
    "huffman",
    "Codec",
    "CodecReport",
    "TensorReport",
    "decode",
    "report",
    "QuantizerConfig",
    "Quantized",
    "quantize",
    "quantize_naive",
    "dequantize",
    "dequantize_naive",
    "QSGDConfig",
    "QSGDQuantized",
    "qsgd",
    "qsgd_naive",
    "qsgd_dequantize",
    "TopKConfig",
    "TopKSparse",
    "topk",
    "topk_naive",
    "topk_densify",
    "quantize_key",
    "broadcast_key",
    "tensor_key",
    "tff_tensor_bits",
    "tff_round_bits",
]
