"""CIFAR-10 python batches: files written here in the original (Python 2 pickle) format."""

import os
import pickle
import tarfile

import numpy as np
import pytest
from cifar_files import make_batch, py2_pickle, write_cifar_folder

from refsim.data.cifar import CIFAR10_MD5, load_cifar10, read_cifar10_batch


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
    folder = tmp_path / "cifar-10-batches-py"
    return folder, write_cifar_folder(folder, 3, seed=1)


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


def test_a_batch_of_the_published_size_must_have_the_published_md5(tmp_path):
    # 10,000 random images: the layout of a published batch, so its MD5 sum is checked
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder, 2, seed=3)
    batch, _, _ = make_batch(np.random.default_rng(4), 10_000)
    (folder / "data_batch_3").write_bytes(py2_pickle(batch))
    with pytest.raises(ValueError, match=r"data_batch_3: MD5 [0-9a-f]{32} is not the published "
                                         r"54ebc095f3ab1f0389bbae665268c751 .* damaged"):
        load_cifar10(folder)
    assert CIFAR10_MD5["test_batch"] == "40351d587109b95175f43aff81a1287e"


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "random"])
def test_a_damaged_batch_file_is_one_line_naming_it_or_reads_as_its_own_shape(tmp_path, damage):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder, 4, seed=5)
    path = folder / "data_batch_2"
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(6)
    for trial in range(20 if damage in ("flip", "truncate") else 1):
        bad = bytearray(raw)
        if damage == "flip":
            bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        elif damage == "truncate":
            bad = bad[:int(rng.integers(len(bad)))]
        elif damage == "empty":
            bad = b""
        else:
            bad = rng.integers(0, 256, 200).astype(np.uint8).tobytes()
        path.write_bytes(bytes(bad))
        try:
            d = load_cifar10(folder)
        except ValueError as err:  # one line that names the file
            assert "data_batch_2" in str(err) and "\n" not in str(err)
        else:  # a flip in pixel data or a label no checksum covers (no published size here)
            assert damage == "flip" and d.x_train.shape == (20, 3, 32, 32)
