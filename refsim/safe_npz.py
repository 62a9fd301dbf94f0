"""Read ``.npz`` and ``.npy`` files that come from outside: every byte is checked before any
array is returned, nothing is unpickled, and every problem is one ``ValueError`` that names
the file.

The readers of checkpoints, traces, golden files, ``refsim compare`` inputs and the MNIST /
FEMNIST ``.npz`` files all go through :func:`read_npz` and :func:`read_npy`. They replace
``numpy.load`` there because, for a damaged file, ``numpy.load``

* opens an ``.npz`` lazily: a flipped byte in a member surfaces only when that member is first
  read, as ``zipfile.BadZipFile``, possibly deep inside a run;
* takes anything that is neither a zip archive nor an ``.npy`` file for a pickle, and with
  ``allow_pickle=False`` answers with a message that suggests loading it unsafely;
* fails with any of ``BadZipFile``, ``EOFError``, ``OSError``, ``NotImplementedError``,
  ``RuntimeError``, ``zlib.error``, ``KeyError`` or ``ValueError``, none naming the file.

What is checked (zip: PKWARE's APPNOTE.TXT, as Python's ``zipfile`` reads it; ``.npy``: the
format of ``numpy.lib.format``):

* ``.npz``: a zip archive whose members are all ``<key>.npy``, each name once, as many as its
  end record declares; each member's local header agrees with its central directory entry
  (compression method, CRC-32, sizes), and each member is read in full (decompressed where
  it is compressed, as ``np.savez_compressed`` writes) and checked against its CRC-32;
* each ``.npy`` (a member, or a file of its own): the magic ``\\x93NUMPY``, format version 1.0,
  2.0 or 3.0, a header that is a literal dict of exactly ``descr``, ``fortran_order`` and
  ``shape``, a dtype without Python objects (those would need pickle), and exactly
  prod(shape) x itemsize bytes of data after the header (no more, no fewer).

What cannot be checked: an ``.npy`` file carries no checksum, so a flipped bit in its data
gives other numbers (a flipped bit in its header or a wrong length is reported). In a zip
archive, a flipped byte in a field that no checksum or second copy covers and no reader uses
(a timestamp, file attributes, the "version made by") is accepted, and the arrays returned
are then exactly the ones written (``tests/test_safe_npz.py`` flips every byte of an archive:
9% to 14% of the flips are of this kind, the others are reported).

>>> import io
>>> buf = io.BytesIO(); np.savez(buf, w=np.arange(3.0))
>>> read_npz(buf.getvalue(), "w.npz")["w"].tolist()
[0.0, 1.0, 2.0]
>>> read_npz(buf.getvalue()[:100], "w.npz")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
refsim.safe_npz.DamagedFileError: w.npz is truncated or corrupt (no readable zip ...; 100 bytes)
"""

from __future__ import annotations

import ast
import io
import math
import os
import struct
import zipfile
import zlib

import numpy as np

__all__ = ["DamagedFileError", "read_npz", "read_npy"]

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a first member; an archive with no members
PICKLE_MAGIC = b"\x80"  # protocol 2 and later
MAX_HEADER_BYTES = 10000  # numpy.load's own limit on an .npy header
NPY_HEADERS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
NPY_KEYS = {"descr", "fortran_order", "shape"}
# What zipfile raises on damaged archives and members (found by fuzzing, see
# tests/test_safe_npz.py): bad signatures and CRCs, cut-off reads, unknown compression
# methods, a flipped "encrypted" flag, garbage deflate data, and bad name bytes.
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError,
               zlib.error, struct.error, ValueError, UnicodeDecodeError, OverflowError)


class DamagedFileError(ValueError):
    """A file that is empty, truncated, corrupt or not of the format asked for. The message
    names the file and the problem; callers may add what to do about it."""


def _contents(source, name: str | None) -> tuple[bytes, str]:
    """(the bytes of ``source``, the name for messages). ``source`` is a path or bytes; a
    missing or unreadable path raises OSError as ``open`` does."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    path = os.fspath(source)
    with open(path, "rb") as f:
        return f.read(), name or path


def _npy_array(data: bytes, what: str, name: str) -> np.ndarray:
    """The array in the ``.npy`` bytes ``data``; ``what`` says where they came from (the file,
    or ``params.npy`` inside it) and ``name`` is the file."""
    def damaged(problem: str, state: str = "corrupt") -> DamagedFileError:
        return DamagedFileError(f"{name} is {state} ({what}: {problem})" if what != name
                                else f"{name} is {state} ({problem})")

    if not data.startswith(NPY_MAGIC):
        raise damaged("no .npy magic \\x93NUMPY at its start")
    if len(data) < 8:
        raise damaged(f"the .npy header is cut off after {len(data)} bytes", "truncated")
    version = tuple(data[6:8])
    if version not in NPY_HEADERS:
        raise damaged(f".npy format version {version[0]}.{version[1]}, "
                      f"expected 1.0, 2.0 or 3.0")
    length_format, encoding = NPY_HEADERS[version]
    start = 8 + struct.calcsize(length_format)
    if len(data) < start:
        raise damaged(f"the .npy header is cut off after {len(data)} bytes", "truncated")
    (header_len,) = struct.unpack(length_format, data[8:start])
    if header_len > MAX_HEADER_BYTES:
        raise damaged(f"an .npy header of {header_len} bytes (at most {MAX_HEADER_BYTES} "
                      f"are read)")
    if len(data) < start + header_len:
        raise damaged(f"the .npy header is cut off ({len(data) - start} of {header_len} "
                      f"bytes)", "truncated")
    try:
        header = ast.literal_eval(data[start:start + header_len].decode(encoding))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
        raise damaged(f"unreadable .npy header ({type(err).__name__})") from None
    if not isinstance(header, dict) or set(header) != NPY_KEYS:
        raise damaged("the .npy header is not a dict of descr, fortran_order and shape")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(fortran, bool) or not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise damaged(f"bad .npy header values (shape {shape!r}, fortran_order "
                      f"{fortran!r})")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError, KeyError, IndexError):
        raise damaged(f"unknown dtype {header['descr']!r} in the .npy header") from None
    if dtype.hasobject:
        raise DamagedFileError(
            f"{name}: {what} holds Python objects (dtype {dtype}), which could only be read by "
            f"unpickling them; refsim never loads pickles (save numeric arrays instead)")
    count = math.prod(shape)  # Python ints: no overflow
    expected, present = count * dtype.itemsize, len(data) - start - header_len
    if present != expected:
        state = "truncated" if present < expected else "corrupt"
        raise damaged(f"the .npy header says shape {shape} {dtype}, {expected} bytes of "
                      f"data, but {present} follow it", state)
    if dtype.itemsize == 0:
        return np.empty(shape, dtype)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start + header_len)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")  # writable


def read_npy(source, name: str | None = None) -> np.ndarray:
    """The array of one ``.npy`` file (a path, or its bytes), checked as the module docstring
    says. ``name`` is the file's name in messages (default: the path).

    Raises DamagedFileError (a ValueError) for an empty, truncated, corrupt or non-``.npy``
    file and for object arrays; OSError when the path cannot be read.
    """
    data, name = _contents(source, name)
    if not data:
        raise DamagedFileError(f"{name} is empty (0 bytes)")
    if data.startswith(ZIP_MAGIC):
        raise DamagedFileError(f"{name} is an .npz archive, not an .npy file")
    if len(data) < len(NPY_MAGIC) and NPY_MAGIC.startswith(data):
        raise DamagedFileError(f"{name} is truncated ({len(data)} bytes)")
    if not data.startswith(NPY_MAGIC):
        raise DamagedFileError(f"{name} is not an .npy file (it does not start with the "
                               f"\\x93NUMPY magic{_looks_like(data)})")
    return _npy_array(data, name, name)


def _looks_like(data: bytes) -> str:
    return "; it looks like a Python pickle, which refsim never loads" \
        if data.startswith(PICKLE_MAGIC) else ""


def _shown(member: str) -> str:
    """A member name as messages show it: as is when printable, else its repr (one line)."""
    return member if member.isprintable() else repr(member)


def _zip_problem(err: Exception, member: str) -> str:
    """What zipfile's exception ``err`` on reading ``member`` means, in words."""
    if isinstance(err, zipfile.BadZipFile):
        return (f"CRC mismatch in {member}" if str(err).startswith("Bad CRC-32")
                else f"{member}: {err}")
    meaning = {EOFError: "its data is cut off", zlib.error: "its deflate data is corrupt",
               RuntimeError: "it is marked as encrypted",
               NotImplementedError: "an unknown compression method or zip version"}
    return f"{member}: " + next((text for kind, text in meaning.items()
                                 if isinstance(err, kind)), f"{type(err).__name__}: {err}")


def _declared_members(data: bytes) -> int:
    """The member count in the zip end record (zip64's where the 16-bit field overflows).

    zipfile parses the central directory without comparing the entries it finds with this
    count, so a flipped byte in an entry's comment length hides the entries after it."""
    at = len(data) - 22  # an end record without an archive comment, as np.savez writes
    if data[at:at + 4] != b"PK\x05\x06" or data[at + 20:at + 22] != b"\x00\x00":
        at = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    (count,) = struct.unpack_from("<H", data, at + 10)
    locator = at - 20  # the zip64 end record locator, when present, sits just before
    if count == 0xFFFF and locator >= 0 and data[locator:locator + 4] == b"PK\x06\x07":
        (offset,) = struct.unpack_from("<Q", data, locator + 8)
        if data[offset:offset + 4] == b"PK\x06\x06" and len(data) >= offset + 40:
            (count,) = struct.unpack_from("<Q", data, offset + 32)
    return count


def _local_header_problem(data: bytes, info: zipfile.ZipInfo) -> str | None:
    """How the local header of ``info``'s member disagrees with its central directory entry
    (method, CRC-32, sizes), or None. zipfile reads only the central directory's copies, so
    without this a flipped byte in the local ones would pass unseen."""
    at = info.header_offset
    if at < 0 or len(data) < at + 30:
        return "its local header is outside the file"
    (_, _, flags, method, _, _, crc, csize, usize, name_len,
     extra_len) = struct.unpack_from("<4s5H3L2H", data, at)
    if method != info.compress_type:
        return f"compression method {method} in its local header, {info.compress_type} in the " \
               f"zip directory"
    if flags & 0x08:  # sizes and CRC follow the data (a streamed archive): nothing to compare
        return None
    extra = data[at + 30 + name_len:at + 30 + name_len + extra_len]
    while len(extra) >= 4:  # the zip64 record holds the sizes that do not fit 32 bits
        kind, size = struct.unpack_from("<2H", extra)
        if kind == 1 and size >= 16 and len(extra) >= 20 and \
                (usize, csize) == (0xFFFFFFFF, 0xFFFFFFFF):
            usize, csize = struct.unpack_from("<2Q", extra, 4)
        extra = extra[4 + size:]
    if (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
        return "its local header's CRC-32 or sizes differ from the zip directory's"
    return None


def read_npz(source, name: str | None = None) -> dict[str, np.ndarray]:
    """Every array of one ``.npz`` file (a path, or its bytes), {key: array} in archive order,
    each checked as the module docstring says, all read before this returns.

    ``name`` is the file's name in messages (default: the path). Raises DamagedFileError (a
    ValueError) for an empty, truncated, corrupt or non-``.npz`` file (e.g. "checkpoint.npz is
    corrupt (CRC mismatch in params.npy)") and for object arrays; OSError when the path
    cannot be read.
    """
    data, name = _contents(source, name)
    if not data:
        raise DamagedFileError(f"{name} is empty (0 bytes)")
    if data.startswith(NPY_MAGIC):
        raise DamagedFileError(f"{name} is an .npy file, not an .npz archive")
    if any(len(data) < 4 and magic.startswith(data) for magic in ZIP_MAGIC):
        raise DamagedFileError(f"{name} is truncated ({len(data)} bytes)")
    if not data.startswith(ZIP_MAGIC):
        raise DamagedFileError(f"{name} is not an .npz file (it does not start with a zip "
                               f"header{_looks_like(data)})")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except _ZIP_ERRORS:
        raise DamagedFileError(f"{name} is truncated or corrupt (no readable zip directory at "
                               f"its end; {len(data)} bytes)") from None
    declared = _declared_members(data)
    if len(members) != declared:
        raise DamagedFileError(f"{name} is corrupt (its zip directory lists {len(members)} "
                               f"members, its end record declares {declared})")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for info in members:
            key, member = info.filename[:-4], _shown(info.filename)
            if not info.filename.endswith(".npy") or key in arrays:
                problem = ("appears twice" if key in arrays else
                           "is not an .npy array, and an .npz holds only <key>.npy members")
                raise DamagedFileError(f"{name} is corrupt (member {member} {problem})")
            problem = _local_header_problem(data, info)
            if problem:
                raise DamagedFileError(f"{name} is corrupt ({member}: {problem})")
            try:
                raw = archive.read(info)  # checks the CRC-32
            except _ZIP_ERRORS as err:
                raise DamagedFileError(f"{name} is corrupt ({_zip_problem(err, member)})") \
                    from None
            arrays[key] = _npy_array(raw, member, name)
    return arrays
