"""The embedded datasets (real MNIST/FEMNIST, offline) and the loaders for user files."""

import gzip
import hashlib
import importlib.util
import os
import pathlib

import numpy as np
import pytest

from refsim.data import datasets
from refsim.data.datasets import (EMBEDDED_MD5, embedded_bytes, load_femnist, load_mnist,
                                  load_mnist_writers)
from refsim.data.idx import encode_idx, read_idx
from refsim.data.transforms import MNIST_MEAN, MNIST_STD, invert, standardize, to_float

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"  # CI checks the clone out beside ../shared
needs_shared = pytest.mark.skipif(not (SHARED / "mnist").is_dir(),
                                  reason="../shared/data (verified originals) not present")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_embedded_mnist_is_the_real_split(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28) and mnist.x_test.dtype == np.uint8
    assert mnist.y_train.dtype == np.int64 and mnist.y_test.dtype == np.int64
    # class counts published with the data (and in ../shared/data/README.md)
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                   6265, 5851, 5949]
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                  974, 1009]
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    x = to_float(mnist.x_train)
    assert abs(float(x.mean()) - MNIST_MEAN) < 5e-5 and abs(float(x.std()) - MNIST_STD) < 5e-5


def test_embedded_files_match_md5_table():
    folder = REPO / "refsim" / "data" / "embedded"
    for name, md5 in EMBEDDED_MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == md5, name


def test_md5_mismatch_is_reported(monkeypatch):
    monkeypatch.setitem(datasets.EMBEDDED_MD5, "t10k-labels-idx1-ubyte.gz", "0" * 32)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is corrupt: MD5"):
        load_mnist()
    with pytest.raises(ValueError, match="no embedded file"):
        embedded_bytes("nope.gz")


def test_mnist_writers(mnist):
    w_train, w_test = load_mnist_writers()
    np.testing.assert_array_equal(w_train, mnist.groups_train)
    np.testing.assert_array_equal(w_test, mnist.groups_test)
    assert len(np.unique(w_train)) == 539 and len(np.unique(w_test)) == 297
    assert not set(np.unique(w_train)) & set(np.unique(w_test))
    sizes = np.bincount(w_train)[np.unique(w_train)]
    assert sizes.min() == 19 and sizes.max() == 131 and np.median(sizes) == 116


@needs_shared
def test_writers_equal_qmnist_column_2():
    for split, q in [("train", "qmnist-train"), ("t10k", "qmnist-test")]:
        qmnist = read_idx(SHARED / "mnist" / f"{q}-labels-idx2-int.gz")
        ids = read_idx(REPO / "refsim" / "data" / "embedded" / f"{split}-writers-idx1-short.gz")
        np.testing.assert_array_equal(ids, qmnist[:len(ids), 2])


@needs_shared
def test_derivation_script_reproduces_embedded_files(tmp_path):
    spec = importlib.util.spec_from_file_location("mkw", REPO / "refsim" / "data" / "embedded" / "make_mnist_writers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(SHARED / "mnist"), str(SHARED / "mnist"), str(tmp_path)]) == 0
    for split in ("train", "t10k"):
        name = f"{split}-writers-idx1-short.gz"
        np.testing.assert_array_equal(read_idx(tmp_path / name),
                                      read_idx(REPO / "refsim" / "data" / "embedded" / name))
        assert hashlib.md5((tmp_path / name).read_bytes()).hexdigest() == EMBEDDED_MD5[name]


def test_writer_script_rejects_misaligned_labels():
    spec = importlib.util.spec_from_file_location("mkw", REPO / "refsim" / "data" / "embedded" / "make_mnist_writers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    q = np.zeros((5, 8), np.int32)
    q[:, 2] = [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(module.writer_ids(q, np.zeros(4, np.uint8)), [10, 11, 12, 13])
    with pytest.raises(ValueError, match="differ at 1 rows, first at row 2"):
        module.writer_ids(q, np.array([0, 0, 1, 0], np.uint8))


def _small_mnist(rng, n):
    return (rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
            rng.integers(0, 10, n).astype(np.uint8))


@pytest.mark.parametrize("layout", ["gz", "raw", "torchvision"])
def test_load_mnist_from_idx_folder(tmp_path, layout):
    rng = np.random.default_rng(0)
    data = {"train": _small_mnist(rng, 7), "t10k": _small_mnist(rng, 3)}
    for split, (x, y) in data.items():
        for kind, a, stem in [("images", x, "idx3"), ("labels", y, "idx1")]:
            name = (f"{split}-{kind}.{stem}-ubyte" if layout == "torchvision"
                    else f"{split}-{kind}-{stem}-ubyte")
            name += ".gz" if layout == "gz" else ""
            (tmp_path / name).write_bytes(encode_idx(a, compress=layout == "gz"))
    d = load_mnist(tmp_path)
    np.testing.assert_array_equal(d.x_train, data["train"][0])
    np.testing.assert_array_equal(d.y_test, data["t10k"][1])
    assert d.y_train.dtype == np.int64 and d.groups_train is None


def test_load_mnist_user_folder_errors(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _small_mnist(rng, 4)
    with pytest.raises(ValueError, match="no MNIST train images file"):
        load_mnist(tmp_path)
    for split in ("train", "t10k"):
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(encode_idx(x, compress=True))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(encode_idx(y, compress=True))
    load_mnist(tmp_path)
    truncated = tmp_path / "train-images-idx3-ubyte.gz"
    truncated.write_bytes(encode_idx(x, compress=True)[:-40])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: truncated gzip"):
        load_mnist(tmp_path)
    truncated.write_bytes(gzip.compress(encode_idx(x)[:-5]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: truncated IDX body"):
        load_mnist(tmp_path)
    truncated.write_bytes(encode_idx(x[:, :, :27].copy(), compress=True))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        load_mnist(tmp_path)
    truncated.write_bytes(encode_idx(x[:3].copy(), compress=True))
    with pytest.raises(ValueError, match="labels for 3 images"):
        load_mnist(tmp_path)


def test_load_keras_npz(tmp_path):
    rng = np.random.default_rng(2)
    (x_tr, y_tr), (x_te, y_te) = _small_mnist(rng, 5), _small_mnist(rng, 2)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    d = load_mnist(path)
    np.testing.assert_array_equal(d.x_train, x_tr)
    np.testing.assert_array_equal(d.y_test, y_te)
    np.savez(path, x_train=x_tr, y_train=y_tr)
    with pytest.raises(ValueError, match=r"mnist.npz: missing arrays \['x_test', 'y_test'\]"):
        load_mnist(path)
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="mnist.npz is truncated or corrupt"):
        load_mnist(path)
    np.savez(path, x_train=x_tr, y_train=y_tr + 10, x_test=x_te, y_test=y_te)
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        load_mnist(path)


def test_femnist():
    f = load_femnist()
    assert f.x_train.shape == (29224, 28, 28) and f.x_test.shape == (3358, 28, 28)
    assert f.group_names.shape == (212,)
    assert len(np.unique(f.groups_train)) == 212 and len(np.unique(f.groups_test)) == 212
    assert f.y_train.min() == 0 and f.y_train.max() == 61
    assert np.median(f.x_train) == 255  # LEAF convention: 255 is the background
    digits = load_femnist(only_digits=True)
    assert len(digits.y_train) == 20580 and len(digits.y_test) == 2314
    assert digits.y_train.max() == 9
    np.testing.assert_array_equal(digits.x_train, f.x_train[f.y_train < 10])
    np.testing.assert_array_equal(digits.groups_test, f.groups_test[f.y_test < 10])


def test_transforms():
    x = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    np.testing.assert_allclose(to_float(x), [[0, 1], [0.2, 0.4]], rtol=1e-7)
    z = standardize(to_float(x))
    np.testing.assert_allclose(z, (np.array([[0, 1], [0.2, 0.4]]) - 0.1307) / 0.3081, rtol=1e-6)
    assert z.dtype == np.float32
    np.testing.assert_array_equal(invert(x), [[255, 0], [204, 153]])
    with pytest.raises(TypeError, match="uint8"):
        to_float(x.astype(np.float32))
    with pytest.raises(TypeError, match="to_float first"):
        standardize(x)
    with pytest.raises(ValueError, match="std must be positive"):
        standardize(to_float(x), std=0.0)


def test_embedded_folder_holds_only_declared_files():
    folder = REPO / "refsim" / "data" / "embedded"
    names = set(os.listdir(folder)) - {"__pycache__"}
    assert names == set(EMBEDDED_MD5) | {"LICENSES.md", "make_mnist_writers.py"}
