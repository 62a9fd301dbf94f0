"""refsim.safe_npz: a damaged .npz or .npy is one DamagedFileError naming the file, never a
pickle, never a lazily failing array, and never silently different arrays (for .npz)."""

import io
import pickle
import re
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim.safe_npz import DamagedFileError, read_npy, read_npz


def _npz(arrays: dict, compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


CHECKPOINT_LIKE = {"params": np.linspace(-1, 1, 37, dtype=np.float32), "round": np.int64(4),
                   "meta": np.array('{"format_version": 1}'), "state_v": np.eye(3)}
ARRAYS = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]).flatmap(
        lambda dt: st.lists(st.integers(0, 4), max_size=3).map(
            lambda shape: (np.arange(int(np.prod(shape))) % 7).astype(dt).reshape(shape))),
    min_size=1, max_size=4)


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a)


def _one_line(err: Exception, name: str) -> str:
    text = str(err)
    assert "\n" not in text and text.isprintable() and name in text, text
    return text


@pytest.mark.parametrize("compressed", [False, True])
def test_round_trip_reads_what_numpy_wrote(compressed):
    arrays = {**CHECKPOINT_LIKE, "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "big": np.arange(5, dtype=">i4"), "empty": np.zeros((0, 3))}
    back = read_npz(_npz(arrays, compressed), "x.npz")
    assert _same(back, arrays)
    assert back["f"].flags.f_contiguous and all(a.flags.writeable for a in back.values())
    assert read_npz(_npz({}), "none.npz") == {}


@pytest.mark.parametrize("compressed", [False, True])
def test_every_flipped_byte_is_reported_or_harmless(compressed):
    """Exhaustive over the positions of a small archive, three masks each: either a
    DamagedFileError naming the file, or exactly the arrays that were written."""
    data = _npz(CHECKPOINT_LIKE, compressed)
    reported = 0
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[pos] ^= mask
            try:
                back = read_npz(bytes(damaged), "checkpoint.npz")
            except DamagedFileError as err:
                _one_line(err, "checkpoint.npz")
                reported += 1
                continue
            assert _same(back, CHECKPOINT_LIKE), (pos, mask)
    assert reported > 0.85 * 3 * len(data)  # harmless: timestamps, attributes, versions


def test_a_flipped_byte_in_a_member_is_a_crc_mismatch_naming_it():
    data = bytearray(_npz(CHECKPOINT_LIKE))
    at = bytes(data).index(CHECKPOINT_LIKE["params"].tobytes()) + 5
    data[at] ^= 0x10
    with pytest.raises(DamagedFileError, match=r"^checkpoint.npz is corrupt \(CRC mismatch in "
                                               r"params.npy\)$"):
        read_npz(bytes(data), "checkpoint.npz")


@settings(max_examples=60, deadline=None)
@given(arrays=ARRAYS, compressed=st.booleans(), data=st.data())
def test_flips_anywhere_in_any_archive_are_reported_or_harmless(arrays, compressed, data):
    raw = _npz(arrays, compressed)
    pos = data.draw(st.integers(0, len(raw) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = bytearray(raw)
    damaged[pos] ^= mask
    try:
        back = read_npz(bytes(damaged), "a.npz")
    except DamagedFileError as err:
        _one_line(err, "a.npz")
        return
    assert _same(back, arrays)


@settings(max_examples=60, deadline=None)
@given(arrays=ARRAYS, compressed=st.booleans(), data=st.data())
def test_every_truncation_is_reported(arrays, compressed, data):
    raw = _npz(arrays, compressed)
    n = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DamagedFileError) as info:
        read_npz(raw[:n], "a.npz")
    assert re.match(r"a.npz is (truncated|empty)", _one_line(info.value, "a.npz"))


def test_every_truncation_of_a_checkpoint_is_reported():
    raw = _npz(CHECKPOINT_LIKE)
    for n in range(len(raw)):
        with pytest.raises(DamagedFileError, match="^ck.npz is (truncated|empty)"):
            read_npz(raw[:n], "ck.npz")


def test_empty_random_pickle_and_npy_inputs(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"")
    with pytest.raises(DamagedFileError, match=r"x.npz is empty \(0 bytes\)$"):
        read_npz(path)
    path.write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(DamagedFileError, match=r"x.npz is not an .npz file \(it does not start "
                                               r"with a zip header\)$") as info:
        read_npz(path)
    assert "allow_pickle" not in str(info.value)
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DamagedFileError, match="looks like a Python pickle, which refsim never "
                                               "loads"):
        read_npz(path)
    path.write_bytes(_npy(np.arange(3)))
    with pytest.raises(DamagedFileError, match="is an .npy file, not an .npz archive"):
        read_npz(path)
    with pytest.raises(FileNotFoundError):
        read_npz(tmp_path / "missing.npz")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_another_exception(raw):
    for reader in (read_npz, read_npy):
        try:
            reader(raw, "r.bin")
        except DamagedFileError as err:
            _one_line(err, "r.bin")


def test_object_arrays_are_refused_not_unpickled():
    objects = np.array([{"evil": 1}], dtype=object)
    buf = io.BytesIO()
    np.save(buf, objects, allow_pickle=True)
    with pytest.raises(DamagedFileError, match="holds Python objects .*refsim never loads "
                                               "pickles"):
        read_npy(buf.getvalue(), "o.npy")
    buf = io.BytesIO()
    np.savez(buf, ok=np.arange(2), o=objects)
    with pytest.raises(DamagedFileError, match=r"o.npz: o.npy holds Python objects"):
        read_npz(buf.getvalue(), "o.npz")


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def test_archives_that_are_not_npz_files():
    one = _npy(np.arange(3))
    with pytest.raises(DamagedFileError, match="member notes.txt is not an .npy array"):
        read_npz(_zip([("a.npy", one), ("notes.txt", b"hello")]), "z.npz")
    with pytest.raises(DamagedFileError, match="member a.npy appears twice"):
        with pytest.warns(UserWarning, match="Duplicate name"):
            read_npz(_zip([("a.npy", one), ("a.npy", one)]), "z.npz")
    with pytest.raises(DamagedFileError, match=r"z.npz is corrupt \(a.npy: no .npy magic"):
        read_npz(_zip([("a.npy", b"not an array")]), "z.npz")
    with pytest.raises(DamagedFileError, match=r"\(a.npy: the .npy header says shape \(3,\) "
                                               r"int64, 24 bytes of data, but 16 follow it\)"):
        read_npz(_zip([("a.npy", one[:-8])]), "z.npz")


def test_a_hidden_directory_entry_is_reported():
    """zipfile does not compare the entries it finds with the end record's count: a flipped
    comment length in one entry would hide the entries after it."""
    raw = bytearray(_npz(CHECKPOINT_LIKE))
    first = bytes(raw).index(b"PK\x01\x02")
    raw[first + 32] = 0xFF  # entry 1's comment length: swallows the entries after it
    with pytest.raises(DamagedFileError, match="lists 1 members, its end record declares 4"):
        read_npz(bytes(raw), "c.npz")


@pytest.mark.parametrize("array", [np.arange(20, dtype=np.float32), np.float64(3.5),
                                   np.asfortranarray(np.arange(6, dtype=">i8").reshape(2, 3)),
                                   np.array(["ab", "c"]), np.zeros((2, 0))])
def test_npy_round_trip_and_damage(array):
    raw = _npy(array)
    back = read_npy(raw, "w.npy")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    for pos in range(len(raw)):
        for mask in (0x01, 0x02, 0x80, 0xFF):
            damaged = bytearray(raw)
            damaged[pos] ^= mask
            try:
                back = read_npy(bytes(damaged), "w.npy")
            except DamagedFileError as err:
                _one_line(err, "w.npy")
                continue
            # .npy has no checksum: a flip in the data (or one turning '<' into '>' in the
            # header) gives other numbers, but never another number of them
            assert back.size == array.size and back.dtype.itemsize == array.dtype.itemsize
    for n in range(len(raw)):
        with pytest.raises(DamagedFileError, match="^w.npy is (truncated|empty)"):
            read_npy(raw[:n], "w.npy")
    with pytest.raises(DamagedFileError, match=r"w.npy is corrupt .*but \d+ follow it\)$"):
        read_npy(raw + b"x", "w.npy")
    with pytest.raises(DamagedFileError, match="is an .npz archive, not an .npy file"):
        read_npy(_npz({"a": array}), "w.npy")
