"""The byte layout of an encoded update (codec versions 1 and 2): writing and validated parsing.

Layout (all integers little-endian; the normative text is ``docs/formats.md`` Sec. 3)::

    magic b"RSC" | version u8 (1 or 2) | T u32 (number of tensors)
    T records:
      method u8 (0 identity, 1 quantize, 2 qsgd, 3 topk, 4 topk entropy-coded: version 2
      only) | flags u8 (bit 0: Huffman, bit 1: stochastic rounding; other bits 0) |
      dtype u8 (0 float32, 1 float64) | ndim u8 (0..8) | shape: ndim x u64 |
      params:  identity: none | quantize: bits u8, block u8, min, max (each in dtype) |
               qsgd: s u16, norm f64 | topk: k u64 |
               topk coded: k u64, bits u8 (0: float values), if bits: min, max (in dtype) |
      payload length u64 | payload

Version 2 differs from version 1 only in its Huffman payloads (version-2 streams,
``huffman_v2.py``; version 1 holds version-1 streams) and in method 4 (``topk_code.py``).

The parser checks every field before it allocates anything, and caps the total number of tensor
elements by ``max_elements`` (a hostile header cannot ask for gigabytes). It does not decode
payloads; ``codec.py`` does, with the checks of ``huffman.py`` and ``bitpack.py``.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

import numpy as np

__all__ = ["MAGIC", "VERSION", "VERSIONS", "MAX_ELEMENTS", "DTYPES", "Method", "TensorRecord",
           "write_start", "write_record", "parse"]

MAGIC = b"RSC"
VERSION = 2  # what Codec writes by default
VERSIONS = (1, 2)  # what parse reads
MAX_ELEMENTS = 2**28  # default cap on the elements a decoder allocates (2 GiB of float64)
MAX_NDIM = 8
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Method(enum.IntEnum):
    IDENTITY = 0
    QUANTIZE = 1
    QSGD = 2
    TOPK = 3
    TOPK_CODED = 4  # version 2 only


class TensorRecord(NamedTuple):
    method: Method
    huffman: bool
    dtype: np.dtype
    shape: tuple
    params: tuple  # identity: (); quantize: (bits, stochastic, lo, hi, block);
    # qsgd: (s, norm); topk: (k,); topk coded: (k, bits, stochastic, lo, hi)
    payload: bytes
    record_bytes: int = 0  # filled by parse: bytes of the whole record
    version: int = VERSION  # of the stream the record is in (its Huffman payloads' version)


def write_start(num_tensors: int, version: int = VERSION) -> bytes:
    return MAGIC + bytes([version]) + struct.pack("<I", num_tensors)


def write_record(r: TensorRecord) -> bytes:
    stochastic = (r.method == Method.QUANTIZE and r.params[1]) or (
        r.method == Method.TOPK_CODED and r.params[1] > 0 and r.params[2])
    flags = int(r.huffman) | (int(stochastic) << 1)
    fc = "<f" if r.dtype == np.float32 else "<d"
    head = struct.pack("<BBBB", int(r.method), flags, DTYPES.index(r.dtype), len(r.shape))
    head += struct.pack(f"<{len(r.shape)}Q", *r.shape)
    if r.method == Method.QUANTIZE:
        bits, _stochastic, lo, hi, block = r.params
        head += struct.pack("<BB", bits, block) + struct.pack(fc, lo) + struct.pack(fc, hi)
    elif r.method == Method.QSGD:
        head += struct.pack("<Hd", r.params[0], r.params[1])
    elif r.method == Method.TOPK:
        head += struct.pack("<Q", r.params[0])
    elif r.method == Method.TOPK_CODED:
        k, bits, _stochastic, lo, hi = r.params
        head += struct.pack("<QB", k, bits)
        if bits:
            head += struct.pack(fc, lo) + struct.pack(fc, hi)
    return head + struct.pack("<Q", len(r.payload)) + r.payload


class _Reader:
    """Reads fields from ``buf``; ValueError (never IndexError) when the bytes run out."""

    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"codec: truncated at byte {self.pos} (needed {size} more)")
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return vals

    def bytes(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            left = len(self.buf) - self.pos
            raise ValueError(f"codec: payload of {n} bytes exceeds the {left} left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def _finite(v: float, what: str) -> float:
    if not np.isfinite(v):
        raise ValueError(f"codec: {what} is not finite")
    return float(v)


def _record(rd: _Reader, budget: int, version: int) -> tuple[TensorRecord, int]:
    start = rd.pos
    method, flags, dcode, ndim = rd.take("<BBBB")
    if method > (3 if version == 1 else 4):
        raise ValueError(f"codec: unknown method {method} in a version-{version} stream")
    method = Method(method)
    if flags & ~3 or (flags & 2 and method not in (Method.QUANTIZE, Method.TOPK_CODED)):
        raise ValueError(f"codec: invalid flags {flags:#x} for {method.name}")
    huff = bool(flags & 1)
    if huff and method not in (Method.QUANTIZE, Method.QSGD, Method.TOPK_CODED):
        raise ValueError(f"codec: Huffman flag set on {method.name}")
    if method == Method.TOPK_CODED and not huff:
        raise ValueError("codec: TOPK_CODED needs the Huffman flag")
    if dcode > 1:
        raise ValueError(f"codec: unknown dtype code {dcode}")
    dtype = DTYPES[dcode]
    if ndim > MAX_NDIM:
        raise ValueError(f"codec: ndim {ndim} > {MAX_NDIM}")
    shape = tuple(int(s) for s in rd.take(f"<{ndim}Q"))
    n = 1
    for s in shape:
        n *= s  # exact Python integer: no overflow
    if n > budget:
        raise ValueError(f"codec: tensor of {n} elements exceeds max_elements (left: {budget})")
    fc = "<f" if dcode == 0 else "<d"
    if method == Method.QUANTIZE:
        bits, block = rd.take("<BB")
        if not 1 <= bits <= 16:
            raise ValueError(f"codec: quantize bits {bits} outside 1..16")
        if not 1 <= block * bits <= 16 or (block > 1 and not flags & 1):
            raise ValueError(f"codec: block {block} invalid for {bits} bits (needs Huffman, "
                             f"block * bits <= 16)")
        lo, hi = _finite(rd.take(fc)[0], "min"), _finite(rd.take(fc)[0], "max")
        if not lo <= hi:
            raise ValueError("codec: quantize min > max")
        params = (bits, bool(flags & 2), lo, hi, block)
    elif method == Method.QSGD:
        s, norm = rd.take("<Hd")
        if not 1 <= s <= 32767:
            raise ValueError(f"codec: QSGD levels {s} outside 1..32767")
        if not _finite(norm, "norm") >= 0.0:
            raise ValueError("codec: QSGD norm < 0")
        params = (s, norm)
    elif method == Method.TOPK:
        (k,) = rd.take("<Q")
        if k > n or n >= 2**32:
            raise ValueError(f"codec: top-k k={k} for a tensor of {n} elements")
        params = (k,)
    elif method == Method.TOPK_CODED:
        k, bits = rd.take("<QB")
        if k > n or n >= 2**32:
            raise ValueError(f"codec: top-k k={k} for a tensor of {n} elements")
        if bits > 15:
            raise ValueError(f"codec: top-k value bits {bits} outside 0..15")
        if not bits and flags & 2:
            raise ValueError("codec: stochastic flag on top-k float values")
        lo = hi = 0.0
        if bits:
            lo, hi = _finite(rd.take(fc)[0], "min"), _finite(rd.take(fc)[0], "max")
            if not 0.0 <= lo <= hi:
                raise ValueError("codec: top-k magnitudes need 0 <= min <= max")
        params = (k, bits, bool(flags & 2), lo, hi)
    else:
        params = ()
    (length,) = rd.take("<Q")
    payload = rd.bytes(length)
    expect = None  # quantize / QSGD payloads are checked when decoded
    if method == Method.IDENTITY:
        expect = n * dtype.itemsize
    elif method == Method.TOPK:
        expect = params[0] * (4 + dtype.itemsize)
    if expect is not None and length != expect:
        raise ValueError(f"codec: {method.name} payload is {length} bytes, expected {expect}")
    if method == Method.TOPK_CODED and params[0] == 0 and length:
        raise ValueError("codec: top-k payload of a tensor with k = 0 must be empty")
    return TensorRecord(method, huff, dtype, shape, params, payload, rd.pos - start, version), n


def parse(data: bytes, max_elements: int = MAX_ELEMENTS) -> list[TensorRecord]:
    """Validate the whole layout -> one TensorRecord per tensor (payloads not yet decoded)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    rd = _Reader(bytes(data))
    if rd.buf[:3] != MAGIC:
        raise ValueError("codec: not a refsim codec stream (bad magic)")
    rd.pos = 3
    (version, count) = rd.take("<BI")
    if version not in VERSIONS:
        raise ValueError(f"codec: unsupported version {version} (this refsim reads 1 and 2)")
    if count > len(rd.buf):  # every record takes >= 12 bytes: caps the loop
        raise ValueError(f"codec: {count} tensors cannot fit in {len(rd.buf)} bytes")
    records, budget = [], max_elements
    for _ in range(count):
        rec, n = _record(rd, budget, version)
        records.append(rec)
        budget -= n
    if rd.pos != len(rd.buf):
        raise ValueError(f"codec: {len(rd.buf) - rd.pos} trailing bytes")
    return records
