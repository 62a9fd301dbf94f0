"""Reader and writer for the IDX format in which MNIST (and QMNIST) are distributed.

Reference for the file format of LeCun, Cortes & Burges, "The MNIST database of handwritten
digits" (http://yann.lecun.com/exdb/mnist/, section "FILE FORMATS FOR THE MNIST DATABASE"):

    bytes 0-1  zero
    byte  2    element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
               0x0D float32, 0x0E float64
    byte  3    number of dimensions D
    4*D bytes  each dimension as a big-endian uint32
    then       the elements, big-endian, C (row-major) order

A file may be gzip-compressed (the distributed ``*.gz`` files); the reader looks at the first
two bytes (0x1f 0x8b) rather than at the file name. Every check raises ``ValueError`` naming the
file and what is wrong: a bad magic number, an unknown type code, a truncated or over-long body.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["parse_idx", "read_idx", "encode_idx", "IDX_TYPES"]

# type code -> big-endian NumPy dtype (the byte order the format prescribes)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _decompress(raw: bytes, name: str) -> bytes:
    """The IDX bytes inside ``raw``: gunzipped when ``raw`` starts with the gzip magic."""
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise ValueError(f"{name}: truncated gzip stream (the file ends early)") from None
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{name}: corrupt gzip data ({err})") from None


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one IDX file (raw or gzip) into a native-endian array.

    Parameters
    ----------
    raw : bytes
        The file contents.
    name : str
        Used in error messages (normally the file name).

    Returns
    -------
    ndarray, shape (d_1, ..., d_D)
        Elements in native byte order (uint8 for MNIST images and labels).

    >>> parse_idx(encode_idx(np.arange(6, dtype=np.uint8).reshape(2, 3)))
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    data = _decompress(bytes(raw), name)
    if len(data) < 4:
        raise ValueError(f"{name}: {len(data)} bytes is too short for an IDX header (4 bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: bad IDX magic number 0x{data[:4].hex()} "
                         "(the first two bytes must be zero)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX element type 0x{type_code:02x} in magic "
                         f"0x{data[:4].hex()}")
    if ndim == 0:
        raise ValueError(f"{name}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} of {header_len} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise ValueError(f"{name}: truncated IDX body: header declares shape {shape} "
                         f"({expected} bytes in all) but the file has {len(data)} bytes")
    if len(data) > expected:
        raise ValueError(f"{name}: {len(data) - expected} unexpected trailing bytes after "
                         f"an IDX body of shape {shape}")
    body = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return body.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) from disk; see :func:`parse_idx`."""
    with open(path, "rb") as f:
        raw = f.read()
    return parse_idx(raw, name=os.fspath(path))


def encode_idx(array: np.ndarray, compress: bool = False) -> bytes:
    """The IDX bytes of ``array`` (inverse of :func:`parse_idx`).

    With ``compress=True`` the bytes are gzip level 9 with mtime 0, so the output is a pure
    function of the array (used by ``refsim/data/embedded/make_mnist_writers.py`` and by the tests).
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"IDX has no element type for dtype {array.dtype}; "
                        f"supported: {sorted(str(d) for d in codes)}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    data = header + body
    return gzip.compress(data, compresslevel=9, mtime=0) if compress else data
