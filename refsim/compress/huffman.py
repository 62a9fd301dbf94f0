"""Canonical Huffman coding of uint8/uint16 symbol streams in a self-describing byte format.

The reference for entropy-coding quantized updates, as in Deep Compression (Han, Mao and Dally,
ICLR 2016, arXiv:1510.00149, Sec. 4: "Huffman coding ... of the quantized weights") and in the
variable-length coding of QSGD levels (Alistarh et al., NeurIPS 2017, arXiv:1610.02132, Sec. 3.2).
Code lengths and codewords come from ``huffman_code.py`` (length-limited package-merge, canonical
codewords, deterministic ties), so two conformant encoders produce identical bytes.

Two versions of the byte format, named by the stream's first byte (``docs/formats.md``):

* **Version 2** (``huffman_v2.py``, written by default): a compact code-length table (run
  lengths and deltas, Huffman-coded: ``huffman_table.py``), four contiguous segment streams,
  DEFLATE's LSB-first bit packing, varint sizes.
* **Version 1** (``huffman_v1.py``): a byte per code length, four interleaved streams, MSB-first
  bits, fixed-width sizes. Still decoded; written with ``encode(x, version=1)``.

``encode_naive``/``decode_naive`` are the oracles of ``encode``/``decode`` (identical bytes,
identical symbols, ValueError on the same inputs). The decoders reject malformed, truncated or
trailing input with ValueError and one line; every index derived from input bytes is checked
before the jitted loops use it (Numba does not bound-check).
"""

from __future__ import annotations

import numpy as np

from refsim.compress import huffman_v1, huffman_v2
from refsim.compress.huffman_code import entropy_bits
from refsim.compress.huffman_kernels import PRIMARY_BITS, STREAMS

__all__ = [
    "VERSION",
    "VERSIONS",
    "LENGTHS",
    "STREAMS",
    "PRIMARY_BITS",
    "encode",
    "encode_naive",
    "decode",
    "decode_naive",
    "histogram",
    "histogram_naive",
    "entropy_bits",
    "header_size",
    "version_of",
]

VERSION = 2  # what encode writes
VERSIONS = (1, 2)  # what decode reads
LENGTHS = ("optimal", "mdl")  # encode's rules for the code lengths
_MODULES = {1: huffman_v1, 2: huffman_v2}


def _check_symbols(symbols: object) -> np.ndarray:
    a = np.asarray(symbols)
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"symbols must be a uint8 or uint16 array, got dtype {a.dtype}")
    return np.ascontiguousarray(a).reshape(-1)  # (n,)


def _module(version: object):
    if version not in _MODULES:
        raise ValueError(f"huffman: version must be 1 or 2, got {version!r}")
    return _MODULES[version]


def histogram_naive(symbols) -> np.ndarray:
    """Counts per symbol value, shape (2**(8*itemsize),) int64. Oracle of :func:`histogram`."""
    a = _check_symbols(symbols)
    return np.bincount(a, minlength=1 << (8 * a.itemsize)).astype(np.int64)


def histogram(symbols) -> np.ndarray:
    """Counts per symbol value (Numba), shape (256,) for uint8 or (65536,) for uint16, int64."""
    return huffman_v1.stream_histograms(_check_symbols(symbols)).sum(axis=0)


def _use_mdl(version: object, lengths: object) -> bool:
    if lengths not in LENGTHS:
        raise ValueError(f"huffman: lengths must be 'optimal' or 'mdl', got {lengths!r}")
    if lengths == "mdl" and version != 2:
        raise ValueError("huffman: lengths='mdl' needs version 2 (version 1 sends a byte "
                         "per length, so a coarser code saves nothing)")
    return lengths == "mdl"


def encode(symbols, version: int = VERSION, lengths: str = "optimal") -> bytes:
    """Huffman-code a uint8/uint16 array (any shape, C order) into a self-describing stream.

    version : 2 (default) or 1 (for a reader that knows only version 1).
    lengths : "optimal" (default): each symbol its optimal code length, the normative rule of
        docs/formats.md Sec. 2.1 (the bytes of the golden vectors); "mdl" (version 2): the
        shortest stream among that code and codes whose lengths blocks of symbols share
        (``huffman_mdl``): never longer, smaller tables when n is small against the alphabet;
        any version-2 decoder reads it.
    Oracle: :func:`encode_naive` (identical bytes).

    >>> data = encode(np.array([3, 3, 3, 1, 0], np.uint8))
    >>> len(data), decode(data).tolist()
    (14, [3, 3, 3, 1, 0])
    """
    module, mdl = _module(version), _use_mdl(version, lengths)
    a = _check_symbols(symbols)
    return module.encode(a, mdl=True) if mdl else module.encode(a)


def encode_naive(symbols, version: int = VERSION, lengths: str = "optimal") -> bytes:
    """Oracle of :func:`encode`: codewords as strings of '0'/'1', the package-merge oracle."""
    module, mdl = _module(version), _use_mdl(version, lengths)
    a = _check_symbols(symbols)
    return module.encode_naive(a, mdl=True) if mdl else module.encode_naive(a)


def version_of(data: object) -> int:
    """The version byte of a stream (ValueError if empty or not one refsim reads)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("huffman: empty stream (no version byte)")
    v = bytes(data[:1])[0]
    if v not in VERSIONS:
        raise ValueError(f"huffman: unsupported version {v} (this refsim reads 1 and 2)")
    return v


def decode(data) -> np.ndarray:
    """Decode a version-1 or version-2 stream -> (n,) uint8 or uint16.

    ValueError on any malformed, truncated or trailing input. Oracle: :func:`decode_naive`.
    """
    return _MODULES[version_of(data)].decode(bytes(data))


def decode_naive(data) -> np.ndarray:
    """Oracle of :func:`decode`: one bit at a time, (length, code) looked up in a dict."""
    return _MODULES[version_of(data)].decode_naive(bytes(data))


def header_size(data) -> int:
    """Bytes before the four bit streams (header, code table, stream lengths)."""
    return _MODULES[version_of(data)].header_size(bytes(data))
