"""The update codec a FedAvg client uses: per-tensor compression, then optional Huffman, to bytes.

Composes the steps of this package the way the compression literature composes them (Konecny
et al., arXiv:1610.05492, Sec. 3; Han et al., Deep Compression, arXiv:1510.00149, Sec. 4;
Alistarh et al., QSGD, arXiv:1610.02132): each tensor with more than ``threshold`` elements is
compressed by ``method`` (uniform quantization, QSGD or top-k; smaller tensors, and every tensor
when ``method`` is None, are sent as raw floats, as TFF's ``compression_aggregator`` does), and
the integer symbols of quantize/QSGD are then either bit-packed or Huffman coded; top-k with
``huffman=True`` codes its indices as gaps and its (optionally quantized) values with Huffman
codes (``topk_code.py``).

The exact uplink cost of an update is ``8 * len(codec.encode(tensors))`` bits; :func:`report`
breaks it down per tensor and gives the Shannon entropy of each symbol stream. Tensor j of an
update encoded with ``seed`` draws its stochastic rounding from ``rng.tensor_key(seed, j)``.
The byte layout (version 2 by default; ``Codec(version=1)`` writes version 1 for a reader that
knows only it) is in ``docs/formats.md``; parsing and its checks are in ``codec_format.py``.

Tensors may be NumPy or CuPy arrays. A CuPy tensor that is quantized is quantized on its
device (``quantize_cuda``, the same levels bit for bit) and only its levels are copied to the
host; any other CuPy tensor is copied to the host first. The bytes do not depend on where the
tensor lived.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refsim.backend import is_cupy_array, to_numpy
from refsim.compress import bitpack, huffman, topk_code
from refsim.compress.codec_format import (
    DTYPES,
    MAX_ELEMENTS,
    VERSION,
    VERSIONS,
    Method,
    TensorRecord,
    parse,
    write_record,
    write_start,
)
from refsim.compress.qsgd import QSGDConfig, QSGDQuantized, qsgd, qsgd_bits, qsgd_dequantize
from refsim.compress.quantize import Quantized, QuantizerConfig, dequantize, quantize
from refsim.compress.quantize_cuda import quantize_cuda
from refsim.compress.rng import check_key, tensor_key
from refsim.compress.topk import TopKConfig, TopKSparse, topk, topk_densify

__all__ = ["Codec", "decode", "report", "TensorReport", "CodecReport"]


@dataclass(frozen=True)
class Codec:
    """How a client encodes its update (a list of float32/float64 arrays).

    method : QuantizerConfig | QSGDConfig | TopKConfig | None (None: raw floats).
    huffman : Huffman-code the symbols of quantize / QSGD instead of bit-packing them; for
        top-k, code the indices as gaps and the values (quantized with ``TopKConfig.bits``)
        with Huffman codes (method 4, version 2 only).
    threshold : only tensors with more than ``threshold`` elements are compressed (TFF: 20000).
    block : Huffman-code blocks of ``block`` consecutive quantized levels as one symbol of
        block * bits bits (<= 16), so that the cost per level can fall below 1 bit
        (``bitpack.to_blocks``; docs/compression.md, "Small alphabets").
    version : the byte format written, 2 (default) or 1 (Huffman version-1 payloads, no
        entropy-coded top-k); decode reads both.

    >>> codec = Codec(QuantizerConfig(bits=2, stochastic=False))
    >>> data = codec.encode([np.array([0.0, 1.0, 2.0, 3.0], np.float32)])
    >>> [a.tolist() for a in codec.decode(data)], 8 * len(data)
    ([[0.0, 1.0, 2.0, 3.0]], 312)
    """

    method: QuantizerConfig | QSGDConfig | TopKConfig | None = None
    huffman: bool = False
    threshold: int = 0
    block: int = 1
    version: int = VERSION

    def __post_init__(self):
        if self.method is not None and not isinstance(
                self.method, (QuantizerConfig, QSGDConfig, TopKConfig)):
            raise TypeError(f"method must be a QuantizerConfig, QSGDConfig, TopKConfig or None, "
                            f"got {type(self.method).__name__}")
        if not isinstance(self.huffman, bool):
            raise TypeError("huffman must be a bool")
        if self.version not in VERSIONS:
            raise ValueError(f"codec: version must be 1 or 2, got {self.version!r}")
        if self.huffman and self.method is None:
            raise ValueError("huffman applies to quantize, QSGD or top-k, not to raw floats")
        if isinstance(self.method, TopKConfig) and self.huffman and self.version == 1:
            raise ValueError("entropy-coded top-k needs codec version 2")
        if isinstance(self.method, TopKConfig) and self.method.bits and not self.huffman:
            raise ValueError("quantized top-k values (TopKConfig.bits) need huffman=True")
        if operator.index(self.threshold) < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if operator.index(self.block) != 1 and not (
                self.huffman and isinstance(self.method, QuantizerConfig)
                and 1 <= self.block and self.block * self.method.bits <= 16):
            raise ValueError(f"block={self.block}: blocks of quantized levels need huffman=True, "
                             f"a QuantizerConfig and block * bits <= 16")

    def encode(self, tensors, *, seed: int = 0) -> bytes:
        """tensors: list of float arrays (any shapes) -> bytes. Top-k runs without a residual."""
        return self.encode_with_residual(tensors, None, seed=seed)[0]

    def encode_with_residual(self, tensors, residuals, *, seed: int = 0):
        """Like :meth:`encode`, with top-k error feedback: -> (bytes, new residuals).

        residuals : None (zeros) or one array per tensor, same shape and dtype. The returned
        residuals are what top-k did not send (zeros for tensors sent otherwise exactly,
        x - x_hat is *not* fed back for quantizers, which are unbiased or deterministic).
        """
        tensors = list(tensors)
        if residuals is not None and len(residuals) != len(tensors):
            raise ValueError(f"{len(residuals)} residuals for {len(tensors)} tensors")
        key = check_key(seed)
        out = [write_start(len(tensors), self.version)]
        new_res = []
        for j, x in enumerate(tensors):
            if not (is_cupy_array(x) and isinstance(self.method, QuantizerConfig)
                    and x.size > self.threshold):
                x = to_numpy(x)  # only the quantizer has a device kernel (quantize_cuda)
            if x.dtype not in DTYPES:
                raise TypeError(f"tensor {j}: dtype must be float32 or float64, got {x.dtype}")
            res = None if residuals is None else residuals[j]
            record, r = self._encode_one(x, res, tensor_key(int(key), j))
            out.append(write_record(record))
            new_res.append(r)
        return b"".join(out), new_res

    def _encode_one(self, x: np.ndarray, residual, key: int):
        m = self.method
        zero = np.zeros(x.shape, dtype=x.dtype)
        if m is None or x.size <= self.threshold:
            if not np.isfinite(x).all():
                raise ValueError("codec: tensor contains NaN or Inf")
            raw = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()
            return TensorRecord(Method.IDENTITY, False, x.dtype, x.shape, (), raw), zero
        if isinstance(m, QuantizerConfig):
            run = quantize_cuda if is_cupy_array(x) else quantize  # the same levels
            q = run(x, m.bits, stochastic=m.stochastic, seed=key)
            params = (m.bits, m.stochastic, q.min, q.max, self.block)
            levels = q.levels if self.block == 1 else bitpack.to_blocks(q.levels, m.bits,
                                                                         self.block)
            payload = self._symbols(levels, m.bits)
            record = TensorRecord(Method.QUANTIZE, self.huffman, x.dtype, x.shape, params, payload)
            return record, zero
        if isinstance(m, QSGDConfig):
            q = qsgd(x, m.levels, seed=key)
            payload = self._symbols(q.symbols, qsgd_bits(m.levels))
            return TensorRecord(Method.QSGD, self.huffman, x.dtype, x.shape, (m.levels, q.norm),
                                payload), zero
        sp = topk(x, m.k_for(x.size), residual)
        if not self.huffman:
            payload = sp.indices.astype("<u4").tobytes() + sp.values.astype(
                x.dtype.newbyteorder("<")).tobytes()
            return TensorRecord(Method.TOPK, False, x.dtype, x.shape, (sp.indices.size,),
                                payload, version=self.version), sp.residual
        bits = m.bits or 0
        payload, lo, hi, sent = b"", 0.0, 0.0, sp.values
        if sp.indices.size:
            values, lo, hi, sent = topk_code.encode_values(sp.values, bits, m.stochastic, key)
            payload = topk_code.encode_indices(sp.indices) + values
        res = sp.residual.reshape(-1).copy()  # (n,) error feedback: what was not sent,
        res[sp.indices] = sp.values - sent  # including the quantization error of the values
        params = (sp.indices.size, bits, m.stochastic and bits > 0, lo, hi)
        return TensorRecord(Method.TOPK_CODED, True, x.dtype, x.shape, params, payload,
                            version=self.version), res.reshape(x.shape)

    def _symbols(self, symbols: np.ndarray, bits: int) -> bytes:
        if self.huffman:
            return huffman.encode(symbols, version=self.version)
        return bitpack.pack(symbols, bits).tobytes()

    @staticmethod
    def decode(data: bytes, *, max_elements: int = MAX_ELEMENTS) -> list:
        """See :func:`decode` (the format is self-describing)."""
        return decode(data, max_elements=max_elements)


def _symbols_of(rec: TensorRecord) -> np.ndarray:
    """The coded symbols of a quantize/QSGD record (levels, QSGD symbols, or blocks of
    ``block`` levels), (n_symbols,) uint8/uint16, validated."""
    n = int(np.prod(rec.shape, dtype=np.int64)) if rec.shape else 1
    if rec.method == Method.QUANTIZE:
        block = rec.params[4]
        bits, top, n = block * rec.params[0], 2 ** (block * rec.params[0]) - 1, -(-n // block)
    else:
        bits, top = qsgd_bits(rec.params[0]), 2 * rec.params[0]
    want = np.dtype(np.uint8) if top <= 255 else np.dtype(np.uint16)
    if rec.huffman:
        if rec.payload[:1] != bytes([rec.version]):
            raise ValueError(f"codec: a version-{rec.version} record must hold a version-"
                             f"{rec.version} Huffman stream")
        sym = huffman.decode(rec.payload)
        if sym.size != n or sym.dtype != want:
            raise ValueError(f"codec: Huffman stream holds {sym.size} {sym.dtype} symbols, "
                             f"expected {n} {want}")
    else:
        sym = bitpack.unpack(rec.payload, n, bits)  # ValueError unless exactly the packed size
    if sym.size and int(sym.max()) > top:
        raise ValueError(f"codec: symbol {int(sym.max())} out of range 0..{top}")
    return sym


def _decode_record(rec: TensorRecord) -> np.ndarray:
    if rec.method == Method.IDENTITY:
        return np.frombuffer(rec.payload, dtype=rec.dtype.newbyteorder("<")).astype(
            rec.dtype).reshape(rec.shape)
    if rec.method == Method.QUANTIZE:
        bits, _stochastic, lo, hi, block = rec.params
        levels = _symbols_of(rec)
        if block > 1:
            levels = bitpack.from_blocks(levels, int(np.prod(rec.shape, dtype=np.int64)), bits,
                                         block)
        levels = levels.reshape(rec.shape)
        return dequantize(Quantized(levels, lo, hi, bits, rec.dtype))
    if rec.method == Method.QSGD:
        s, norm = rec.params
        symbols = _symbols_of(rec).reshape(rec.shape)
        return qsgd_dequantize(QSGDQuantized(symbols, norm, s, rec.dtype))
    if rec.method == Method.TOPK_CODED:
        return _decode_topk_coded(rec)
    (k,) = rec.params
    idx = np.frombuffer(rec.payload, dtype="<u4", count=k).astype(np.int64)  # (k,)
    n = int(np.prod(rec.shape, dtype=np.int64)) if rec.shape else 1
    if k and (not bool(np.all(idx[1:] > idx[:-1])) or int(idx[-1]) >= n):
        raise ValueError("codec: top-k indices must be strictly increasing and < tensor size")
    vals = np.frombuffer(rec.payload, dtype=rec.dtype.newbyteorder("<"), count=k,
                         offset=4 * k).astype(rec.dtype)  # (k,)
    if not np.isfinite(vals).all():
        raise ValueError("codec: top-k values contain NaN or Inf")
    return topk_densify(TopKSparse(idx, vals, rec.shape, None))


def _decode_topk_coded(rec: TensorRecord) -> np.ndarray:
    k, bits, _stochastic, lo, hi = rec.params
    n = int(np.prod(rec.shape, dtype=np.int64)) if rec.shape else 1
    idx, vals = np.zeros(0, np.int64), np.zeros(0, rec.dtype)
    if k:
        idx, used = topk_code.decode_indices(rec.payload, k, n)
        vals = topk_code.decode_values(rec.payload[used:], k, rec.dtype, bits, lo, hi)
    return topk_densify(TopKSparse(idx, vals, rec.shape, None))


def decode(data: bytes, *, max_elements: int = MAX_ELEMENTS) -> list:
    """bytes -> list of arrays (dequantized / densified), in the dtypes and shapes encoded.

    ValueError on malformed input; no more than ``max_elements`` elements in all are allocated
    (a hostile header cannot ask for more).
    """
    return [_decode_record(rec) for rec in parse(data, max_elements)]


class TensorReport(NamedTuple):
    shape: tuple
    method: str  # "identity" | "quantize" | "qsgd" | "topk" | "topk_coded"
    huffman: bool
    record_bits: int  # 8 * bytes of this tensor's record (header + payload)
    payload_bits: int  # 8 * bytes of its payload
    num_symbols: int  # coded symbols: quantize/QSGD (blocks if block > 1), quantized top-k
    # values (0 otherwise)
    entropy_bits_per_symbol: float  # Shannon entropy of those symbols (0.0 otherwise)
    nonzeros: int = 0  # top-k: the k entries sent
    index_bits: int = 0  # entropy-coded top-k: bits of the index part of the payload
    index_entropy_bits: float = 0.0  # entropy-coded top-k: log2 C(n, k)


class CodecReport(NamedTuple):
    total_bits: int  # 8 * len(data): the exact uplink cost
    tensors: list  # TensorReport per tensor

    @property
    def entropy_bound_bits(self) -> float:
        """sum over tensors of n * H of the coded symbols, plus log2 C(n, k) for the indices of
        entropy-coded top-k: what an ideal entropy coder would spend on them."""
        return float(sum(t.num_symbols * t.entropy_bits_per_symbol + t.index_entropy_bits
                         for t in self.tensors))


def report(data: bytes, *, max_elements: int = MAX_ELEMENTS) -> CodecReport:
    """Bit accounting of an encoded update, with the entropy of each symbol stream."""
    tensors = []
    for rec in parse(data, max_elements):
        n_sym, h, nnz, ibits, ient = 0, 0.0, 0, 0, 0.0
        if rec.method in (Method.QUANTIZE, Method.QSGD):
            sym = _symbols_of(rec)
            n_sym, h = sym.size, huffman.entropy_bits(huffman.histogram(sym))
        elif rec.method in (Method.TOPK, Method.TOPK_CODED):
            nnz = rec.params[0]
            n = int(np.prod(rec.shape, dtype=np.int64)) if rec.shape else 1
        if rec.method == Method.TOPK_CODED and nnz:
            _decode_topk_coded(rec)  # validates the payload
            _idx, used = topk_code.decode_indices(rec.payload, nnz, n)
            ibits, ient = 8 * used, topk_code.index_entropy_bits(n, nnz)
            if rec.params[1]:
                sym = huffman.decode(rec.payload[used:])
                n_sym, h = sym.size, huffman.entropy_bits(huffman.histogram(sym))
        tensors.append(TensorReport(rec.shape, rec.method.name.lower(), rec.huffman,
                                    8 * rec.record_bytes, 8 * len(rec.payload), n_sym, h, nnz,
                                    ibits, ient))
    return CodecReport(8 * len(data), tensors)
