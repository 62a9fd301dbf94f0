"""CIFAR-10 python batches: files written here in the original (Python 2 pickle) format."""

import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from refsim.data.cifar import load_cifar10, read_cifar10_batch


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING) and NumPy globals under ``numpy.core``,
    as in the files of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module == "numpy._core.multiarray" or module == "numpy":
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"{module.replace('numpy._core', 'numpy.core')}\n"
                       f"{name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type] = save_global


def py2_pickle(obj):
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def make_batch(rng, n):
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    return {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}, data, labels


def test_py2_pickle_uses_old_numpy_module_name():
    raw = py2_pickle(np.zeros(2, np.uint8))
    assert b"numpy.core.multiarray\n_reconstruct" in raw


def test_read_batch_layout():
    rng = np.random.default_rng(0)
    batch, data, labels = make_batch(rng, 4)
    x, y = read_cifar10_batch(py2_pickle(batch), "b")
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0].reshape(4, -1), data[:, :1024])  # red plane first
    np.testing.assert_array_equal(x[2, 2, 1, 5], data[2, 2048 + 32 + 5])  # blue, row 1, col 5
    assert y.tolist() == labels and y.dtype == np.int64
    # a batch written by Python 3 (str keys, protocol 4) reads too
    x3, y3 = read_cifar10_batch(pickle.dumps({"data": data, "labels": labels}, protocol=4))
    np.testing.assert_array_equal(x3, x)


@pytest.fixture
def cifar_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch, data, labels = make_batch(rng, 3)
        (folder / name).write_bytes(py2_pickle(batch))
        expected[name] = (data, labels)
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane"]}))
    return folder, expected


def test_load_folder_and_tarball(cifar_folder, tmp_path):
    folder, expected = cifar_folder
    d = load_cifar10(folder)
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(d.x_train[3:6].reshape(3, -1), expected["data_batch_2"][0])
    assert d.y_test.tolist() == expected["test_batch"][1]
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    t = load_cifar10(tarball)
    np.testing.assert_array_equal(t.x_train, d.x_train)
    np.testing.assert_array_equal(t.y_test, d.y_test)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload, culprit", [
    (Evil(), "system"),
    ({b"data": Evil()}, "system"),
    (pickle.loads(pickle.dumps(np.float64(1.0))), "scalar"),
    ({b"labels": [1], b"data": (eval, ("1",))}, "builtins.eval"),
])
def test_restricted_unpickler_refuses_other_globals(payload, culprit):
    raw = pickle.dumps(payload, protocol=4)  # protocol 4: bytes need no _codecs global
    with pytest.raises(ValueError, match=f"refusing to unpickle global .*{culprit}"):
        read_cifar10_batch(raw, "evil_batch")


def test_bad_batches(cifar_folder):
    folder, _ = cifar_folder
    good = (folder / "data_batch_1").read_bytes()
    with pytest.raises(ValueError, match="evil: not a readable CIFAR-10 pickle"):
        read_cifar10_batch(good[: len(good) // 2], "evil")
    with pytest.raises(ValueError, match="missing key 'labels'"):
        read_cifar10_batch(py2_pickle({b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        read_cifar10_batch(py2_pickle({b"data": np.zeros((1, 3071), np.uint8), b"labels": [0]}))
    with pytest.raises(ValueError, match="expected 1 integer labels"):
        read_cifar10_batch(py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="labels outside 0..9"):
        read_cifar10_batch(py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}))
    (folder / "test_batch").unlink()
    with pytest.raises(ValueError, match="batch test_batch not found"):
        load_cifar10(folder)
    with pytest.raises(ValueError, match="not a readable CIFAR-10 folder or tar"):
        load_cifar10(folder / "data_batch_1")


def test_python3_protocol_2_bytes_need_a_refused_global():
    # Python 3 writes bytes under protocol 2 through _codecs.encode, which the real (Python 2)
    # files never contain; the unpickler refuses it rather than widen its allow-list.
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2)
    with pytest.raises(ValueError, match="_codecs.encode"):
        read_cifar10_batch(raw, "p2")
