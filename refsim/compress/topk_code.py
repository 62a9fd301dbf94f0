"""Entropy-coded top-k payloads: indices as Huffman-coded gaps, values quantized and Huffman-coded.

The sparse update of ``topk.py`` (k indices ascending, k values) costs 32 + 8 * itemsize bits per
non-zero in the raw format. Its indices carry at most log2 C(n, k) bits (an arbitrary k-subset
of n), about log2(e n / k) per non-zero, and its values far fewer than 32 bits once quantized
(Lin et al., "Deep Gradient Compression", ICLR 2018, arXiv:1712.01887, Sec. 3.3; Sattler et al.,
"Sparse Binary Compression", arXiv:1805.08768, Sec. III-C: Golomb-coded gaps). refsim codes

* the gaps g_j = idx_j - idx_{j-1} - 1 (idx_{-1} = -1) by Elias-gamma classes with a Huffman
  code of the classes: class b_j = floor(log2(g_j + 1)) (0..32) is a symbol of a version-2
  Huffman stream; the low b_j bits of g_j + 1 (its leading 1 dropped) follow raw. This is
  DEFLATE's distance code with an adaptive code for the classes (RFC 1951, Sec. 3.2.5); for
  geometric gaps it comes within a few percent of log2 C(n, k);
* the values, with ``bits`` > 0, as magnitudes quantized between their own min and max
  (``quantize.py``, stochastic or round-half-even, key = the tensor's key) and symbols
  (level << 1) | (value < 0) in one Huffman stream; with ``bits`` = 0, as floats.

Payload (codec method 4, ``docs/formats.md`` Sec. 3.2)::

    LB varint | the class stream (LB bytes, version-2 Huffman, k uint8 symbols)
    | the raw low bits, sum of b_j bits, each field MSB first, packed LSB first, zero-padded
    | the values: k floats (bits = 0), or a version-2 Huffman stream of k symbols (width 1 if
      bits <= 7), to the end of the payload

``encode_indices_naive`` / ``decode_indices_naive`` (strings of bits) are the oracles of the
jitted ``encode_indices`` / ``decode_indices``; the values go through ``quantize`` and
``huffman``, whose own oracles pin them. The readers raise ValueError naming the problem.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from refsim.compress import huffman
from refsim.compress.huffman_table import _put
from refsim.compress.huffman_v2 import varint_bytes
from refsim.compress.quantize import Quantized, dequantize, quantize

__all__ = ["index_entropy_bits", "gap_classes", "encode_indices", "encode_indices_naive",
           "decode_indices", "decode_indices_naive", "encode_values", "decode_values",
           "value_symbols"]


def index_entropy_bits(n: int, k: int) -> float:
    """log2 C(n, k): the bits an ideal code spends on an arbitrary k-subset of n indices."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def gap_classes(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes (k,) uint8, g + 1 (k,) int64) of ascending indices idx (k,)."""
    gp1 = np.diff(np.concatenate([[-1], idx.astype(np.int64)]))  # (k,) g_j + 1 >= 1
    classes = np.zeros(idx.size, np.uint8)
    for b in range(1, 33):
        classes += (gp1 >> b > 0).astype(np.uint8)  # floor(log2(g + 1)), exact in integers
    return classes, gp1


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        if pos >= len(data) or shift == 63:
            raise ValueError("codec: top-k payload: truncated or malformed class-stream length")
        b = data[pos]
        v, shift, pos = v | ((b & 127) << shift), shift + 7, pos + 1
        if b < 128:
            return v, pos


# ---------------------------------------------------------------------------------- indices


def encode_indices_naive(idx: np.ndarray) -> bytes:
    """Oracle of :func:`encode_indices`: the class stream, then the low bits as a string."""
    classes, gp1 = gap_classes(idx)
    stream = huffman.encode_naive(classes)
    bits = "".join(format(int(g), "b")[1:] for g in gp1)  # g + 1 without its leading 1
    bits += "0" * (-len(bits) % 8)
    low = np.packbits(np.frombuffer(bits.encode(), np.uint8) - ord("0"), bitorder="little")
    return varint_bytes(len(stream)) + stream + low.tobytes()


def _put_low_loop(classes, gp1, out):
    """The low classes[j] bits of gp1[j], MSB first, packed LSB first into out (zeroed)."""
    st = np.zeros(3, np.uint64)
    for j in range(classes.shape[0]):
        _put(out, st, gp1[j], np.int64(classes[j]))
    if st[1] > np.uint64(0):
        out[st[2]] = np.uint8(st[0])


_put_low = njit(cache=True)(_put_low_loop)


def encode_indices(idx: np.ndarray) -> bytes:
    """Ascending indices (k,) -> the index part of a method-4 payload (Numba bit writer).

    Oracle: :func:`encode_indices_naive` (identical bytes).
    """
    classes, gp1 = gap_classes(idx)
    stream = huffman.encode(classes)
    low = np.zeros((int(classes.sum(dtype=np.int64)) + 7) // 8, np.uint8)
    with np.errstate(over="ignore"):
        _put_low(classes, gp1 & ((np.int64(1) << classes.astype(np.int64)) - 1), low)
    return varint_bytes(len(stream)) + stream + low.tobytes()


def _classes(data: bytes, k: int) -> tuple[np.ndarray, int]:
    """The k gap classes at the start of data and the offset of the low bits."""
    lb, pos = _read_varint(data, 0)
    if lb > len(data) - pos:
        raise ValueError(f"codec: top-k payload: class stream of {lb} bytes exceeds it")
    if data[pos:pos + 1] != b"\x02":
        raise ValueError("codec: top-k payload: the class stream is not a version-2 Huffman stream")
    classes = huffman.decode(data[pos:pos + lb])
    if classes.size != k or classes.dtype != np.uint8 or (k and int(classes.max()) > 32):
        raise ValueError(f"codec: top-k payload: {classes.size} gap classes (need {k} uint8 "
                         f"classes <= 32)")
    return classes, pos + lb


def _end(classes: np.ndarray, start: int, size: int) -> int:
    end = start + (int(classes.sum(dtype=np.int64)) + 7) // 8
    if end > size:
        raise ValueError("codec: top-k payload: truncated low bits of the gaps")
    return end


def decode_indices_naive(data: bytes, k: int, n: int) -> tuple[np.ndarray, int]:
    """Oracle of :func:`decode_indices`: (indices (k,) int64, bytes used)."""
    classes, pos = _classes(data, k)
    end = _end(classes, pos, len(data))
    bits = "".join(format(b, "08b")[::-1] for b in data[pos:end])
    idx, prev, at = [], -1, 0
    for b in classes.tolist():
        prev += (1 << b) + (int(bits[at:at + b], 2) if b else 0)
        at += b
        idx.append(prev)
    if "1" in bits[at:]:
        raise ValueError("codec: top-k payload: nonzero padding bits after the gaps")
    if idx and idx[-1] >= n:
        raise ValueError(f"codec: top-k index {idx[-1]} >= tensor size {n}")
    return np.array(idx, np.int64), end


def _get_low_loop(buf, classes, n, idx):
    """Indices from classes (k,) and the low bits in buf (uint8, exactly long enough: checked
    by the caller); returns 0, -1 for an index >= n, -2 for nonzero padding bits."""
    pos = 0
    prev = -1
    for j in range(classes.shape[0]):
        b = np.int64(classes[j])
        v = np.int64(1)
        for i in range(pos, pos + b):
            v = (v << 1) | ((np.int64(buf[i >> 3]) >> (i & 7)) & 1)
        pos += b
        prev += v
        if prev >= n:
            return -1
        idx[j] = prev
    for i in range(pos, 8 * buf.shape[0]):
        if (np.int64(buf[i >> 3]) >> (i & 7)) & 1:
            return -2
    return 0


_get_low = njit(cache=True)(_get_low_loop)


def decode_indices(data: bytes, k: int, n: int) -> tuple[np.ndarray, int]:
    """The index part at the start of a method-4 payload -> (indices (k,) int64 ascending,
    < n; bytes used). ValueError on malformed bytes. Oracle: :func:`decode_indices_naive`."""
    classes, pos = _classes(data, k)
    end = _end(classes, pos, len(data))
    idx = np.empty(k, np.int64)
    status = _get_low(np.frombuffer(data, np.uint8, end - pos, pos), classes, n, idx)
    if status == -1:
        raise ValueError(f"codec: top-k index >= tensor size {n}")
    if status == -2:
        raise ValueError("codec: top-k payload: nonzero padding bits after the gaps")
    return idx, end


# ---------------------------------------------------------------------------------- values


def value_symbols(levels: np.ndarray, negative: np.ndarray, bits: int) -> np.ndarray:
    """(level << 1) | sign as uint8 (bits <= 7) or uint16."""
    dtype = np.uint8 if bits <= 7 else np.uint16
    return ((levels.astype(np.uint32) << 1) | negative.astype(np.uint32)).astype(dtype)


def encode_values(values: np.ndarray, bits: int, stochastic: bool, key: int):
    """-> (bytes, lo, hi, the values the decoder will see) for k values of a float dtype;
    bits = 0: the floats themselves."""
    if bits == 0:
        return values.astype(values.dtype.newbyteorder("<")).tobytes(), 0.0, 0.0, values
    q = quantize(np.abs(values), bits, stochastic=stochastic, seed=key)
    negative = values < 0
    sent = dequantize(q)
    sent = np.where(negative, -sent, sent).astype(values.dtype)
    return huffman.encode(value_symbols(q.levels, negative, bits)), q.min, q.max, sent


def decode_values(data: bytes, k: int, dtype: np.dtype, bits: int, lo: float,
                  hi: float) -> np.ndarray:
    """The value part of a method-4 payload -> (k,) values in dtype (ValueError if
    malformed)."""
    if bits == 0:
        if len(data) != k * dtype.itemsize:
            raise ValueError(f"codec: top-k values are {len(data)} bytes, expected "
                             f"{k * dtype.itemsize}")
        vals = np.frombuffer(data, dtype.newbyteorder("<")).astype(dtype)
        if not np.isfinite(vals).all():
            raise ValueError("codec: top-k values contain NaN or Inf")
        return vals
    if data[:1] != b"\x02":
        raise ValueError("codec: top-k values: not a version-2 Huffman stream")
    sym = huffman.decode(data)
    want = np.dtype(np.uint8 if bits <= 7 else np.uint16)
    if sym.size != k or sym.dtype != want:
        raise ValueError(f"codec: top-k value stream holds {sym.size} {sym.dtype} symbols, "
                         f"expected {k} {want}")
    levels = (sym >> 1).astype(np.uint8 if bits <= 8 else np.uint16)
    if k and int(levels.max()) > 2**bits - 1:
        raise ValueError(f"codec: top-k value level {int(levels.max())} exceeds {bits} bits")
    mag = dequantize(Quantized(levels, lo, hi, bits, dtype))
    return np.where(sym & 1, -mag, mag).astype(dtype)
