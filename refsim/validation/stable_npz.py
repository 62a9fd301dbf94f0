"""Byte-stable ``.npz`` files: the same arrays always give the same bytes, on every run.

``numpy.savez`` stamps the wall-clock time into every zip entry, so two runs that save equal
arrays write different files. The golden vectors must be regenerable byte for byte, so this
module writes the container itself, fixing every field that could vary. An ``.npz`` is a zip
archive holding one ``.npy`` file per array (NumPy's "NPY format", ``numpy.lib.format``); here:

* one entry ``<name>.npy`` per array, entries in sorted name order, no compression
  (``ZIP_STORED``), date 1980-01-01 00:00:00 (the earliest a zip can hold), Unix permissions
  0644 with ``create_system`` 3 (Unix), no comment and no extra fields;
* each entry is ``numpy.lib.format.write_array(..., version=(1, 0), allow_pickle=False)`` of
  the array made C-contiguous and little-endian.

Only bool, integer and float arrays are accepted (no object arrays, so no pickles, and no
strings, which many C++ ``.npy`` readers do not support). ``numpy.load(path,
allow_pickle=False)`` reads the result like any ``.npz``; :func:`read_npz` reads it back
with every member checked.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from refsim import safe_npz

__all__ = ["npz_bytes", "read_npz"]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_UNIX = 3
_MODE_0644 = 0o100644 << 16  # a regular file, rw-r--r--, in the high 16 bits of external_attr
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")
_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def _portable(name: str, array: object) -> np.ndarray:
    """``array`` as a C-contiguous little-endian bool/int/float array; TypeError otherwise."""
    a = np.asarray(array)
    if a.dtype.kind not in _KINDS:
        raise TypeError(f"array {name!r}: dtype {a.dtype} is not bool, integer or float "
                        f"(object and string arrays are not written)")
    return np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")  # keeps 0-d arrays 0-d


def npz_bytes(arrays: Mapping[str, object]) -> bytes:
    """The bytes of an ``.npz`` holding ``arrays`` (name -> array), identical on every call.

    Names are ASCII letters, digits, ``_`` and ``.`` (not first). See the module docstring for
    the layout.

    >>> data = npz_bytes({"b": np.arange(3), "a": np.eye(2)})
    >>> data == npz_bytes({"a": np.eye(2), "b": np.arange(3)})
    True
    >>> sorted(read_npz(data)), read_npz(data)["b"].tolist()
    (['a', 'b'], [0, 1, 2])
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(f"array name {name!r}: use ASCII letters, digits, '_' and '.'")
            entry = io.BytesIO()
            np.lib.format.write_array(entry, _portable(name, arrays[name]), version=(1, 0),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = _UNIX
            info.external_attr = _MODE_0644
            zf.writestr(info, entry.getvalue())
    return buf.getvalue()


def read_npz(data: bytes, name: str = "<bytes>") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` given as bytes, each member's CRC-32 checked and nothing
    unpickled (``refsim.safe_npz.read_npz``).

    ValueError naming ``name`` and the problem when ``data`` is not a readable ``.npz``.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return safe_npz.read_npz(data, name)
