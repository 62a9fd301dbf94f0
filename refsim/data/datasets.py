"""The embedded MNIST and FEMNIST data, and loaders for MNIST files a user brings.

Datasets (sources, licences and checksums in ``docs/data.md`` and ``embedded/LICENSES.md``):

* MNIST: LeCun, Cortes & Burges, "The MNIST database of handwritten digits" (1998); the four
  original IDX gz files, byte for byte (MD5 equal to the published ones).
* MNIST writer ids: QMNIST, Yadav & Bottou, "Cold Case: The Lost MNIST Digits", NeurIPS 2019
  (arXiv:1905.10498), column 2 of ``qmnist-*-labels-idx2-int.gz``, stored compactly by
  ``refsim/data/embedded/make_mnist_writers.py``. They give the natural per-writer split (539 train writers).
* FEMNIST: a 212-writer subset of LEAF's FEMNIST (Caldas et al. 2018, arXiv:1812.01097; EMNIST,
  Cohen et al. 2017, arXiv:1702.05373), losslessly repacked from LEAF JSON into uint8. LEAF
  convention: pixel 255 is the white background and the ink is dark (the opposite of MNIST).

Loaders return uint8 images and int64 labels; the conversion to float is the caller's explicit
step (``to_float``, ``standardize`` in ``refsim.data.transforms``). Embedded files are checked
against the MD5 table below before they are parsed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from importlib import resources

import numpy as np

from refsim.data.idx import parse_idx
from refsim.safe_npz import read_npz

__all__ = ["ImageData", "EMBEDDED_MD5", "load_mnist", "load_mnist_writers", "load_femnist",
           "embedded_bytes"]

# file name in refsim/data/embedded/ -> MD5 of its bytes
EMBEDDED_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",  # published MD5
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",  # published MD5
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",  # published MD5
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",  # published MD5
    "train-writers-idx1-short.gz": "4bc58d740756d1f4d0e79833e297d5fd",  # make_mnist_writers.py
    "t10k-writers-idx1-short.gz": "ec1061aaa6091ff49f1bb65861b4ee97",  # make_mnist_writers.py
    "femnist_leaf_212writers.npz": "f468ebdd1ddd3ff1b1060d80dc3a72ae",
}
_MNIST_SPLITS = (("train", 60000), ("t10k", 10000))
_MNIST_FILES = {"images": "{split}-images-idx3-ubyte", "labels": "{split}-labels-idx1-ubyte"}
_FEMNIST_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "writer_train", "writer_test",
                   "writers")
# the names torchvision and some mirrors use for the raw files
_MNIST_ALT_FILES = {"images": "{split}-images.idx3-ubyte", "labels": "{split}-labels.idx1-ubyte"}


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A train/test image dataset, optionally with a natural group (writer) per example.

    x_train : ndarray, shape (N, H, W) uint8     y_train : ndarray, shape (N,) int64
    x_test  : ndarray, shape (M, H, W) uint8     y_test  : ndarray, shape (M,) int64
    groups_train : ndarray, shape (N,) int64, or None  (writer of each training example)
    groups_test  : ndarray, shape (M,) int64, or None
    group_names  : ndarray, shape (G,) str, or None  (FEMNIST: ``groups_*`` index into it;
                   MNIST: None, the groups are NIST writer ids themselves)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    groups_train: np.ndarray | None = None
    groups_test: np.ndarray | None = None
    group_names: np.ndarray | None = None


def embedded_bytes(name: str, verify: bool = True) -> bytes:
    """The bytes of one embedded file, after checking its MD5 against :data:`EMBEDDED_MD5`."""
    if name not in EMBEDDED_MD5:
        raise ValueError(f"no embedded file named {name!r}; known: {sorted(EMBEDDED_MD5)}")
    resource = resources.files("refsim.data") / "embedded" / name
    try:
        raw = resource.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"embedded file {name} is missing from the installed package "
                         "(refsim/data/embedded/; is package data installed?)") from None
    if verify:
        digest = hashlib.md5(raw).hexdigest()
        if digest != EMBEDDED_MD5[name]:
            raise ValueError(f"embedded file {name} is corrupt: MD5 {digest}, "
                             f"expected {EMBEDDED_MD5[name]} ({len(raw)} bytes)")
    return raw


def _check_mnist_pair(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Check images (N, 28, 28) uint8 and labels (N,) in 0..9; return (x, y as int64)."""
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"{name}: images must be uint8 of shape (N, 28, 28), "
                         f"got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: {y.shape} labels for {x.shape[0]} images")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{name}: labels must be in 0..9, got range [{y.min()}, {y.max()}]")
    return x, y.astype(np.int64)


def _find_idx(directory: str, split: str, kind: str) -> str:
    candidates = []
    for pattern in (_MNIST_FILES[kind], _MNIST_ALT_FILES[kind]):
        stem = pattern.format(split=split)
        candidates += [stem + ".gz", stem]
    for candidate in candidates:
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    raise ValueError(f"{directory}: no MNIST {split} {kind} file; looked for {candidates}")


def _load_mnist_npz(path: str) -> ImageData:
    """Keras' ``mnist.npz``: arrays x_train (60000, 28, 28), y_train, x_test, y_test (read
    and checked in full by ``refsim.safe_npz.read_npz``: ValueError naming a damaged file)."""
    arrays = read_npz(path)
    missing = {"x_train", "y_train", "x_test", "y_test"} - arrays.keys()
    if missing:
        raise ValueError(f"{path}: missing arrays {sorted(missing)} (Keras mnist.npz layout)")
    x_tr, y_tr = _check_mnist_pair(arrays["x_train"], arrays["y_train"], f"{path} (train)")
    x_te, y_te = _check_mnist_pair(arrays["x_test"], arrays["y_test"], f"{path} (test)")
    return ImageData(x_tr, y_tr, x_te, y_te)


def load_mnist_writers(verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """NIST writer id of each embedded MNIST digit, from QMNIST (see module docstring).

    Returns
    -------
    (writers_train, writers_test) : ndarray, shape (60000,) int64 and (10000,) int64
        539 distinct train writers and 297 test writers, none shared.
    """
    out = []
    for split, n in _MNIST_SPLITS:
        name = f"{split}-writers-idx1-short.gz"
        ids = parse_idx(embedded_bytes(name, verify), name)
        if ids.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},), got {ids.shape}")
        out.append(ids.astype(np.int64))
    return out[0], out[1]


def load_mnist(path: str | os.PathLike | None = None, verify: bool = True) -> ImageData:
    """MNIST as uint8 images and int64 labels.

    Parameters
    ----------
    path : None, a directory, or a ``.npz`` file
        None: the embedded copy (no network; MD5 checked when ``verify``), with the QMNIST writer
        id of every digit in ``groups_train``/``groups_test``. A directory: the four standard IDX
        files, gz or raw (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-...``; torchvision's ``train-images.idx3-ubyte`` names are accepted too). A file
        ending in ``.npz``: Keras' ``mnist.npz``. Groups are None for user files.

    Returns
    -------
    ImageData
        x_train (N, 28, 28) uint8, y_train (N,) int64, x_test (M, 28, 28), y_test (M,);
        the embedded copy has N = 60000, M = 10000.

    Raises ValueError naming the file for a bad magic number, wrong dimensions, a truncated or
    corrupt file, or (embedded files) an MD5 mismatch.
    """
    if path is not None and os.fspath(path).endswith(".npz"):
        return _load_mnist_npz(os.fspath(path))
    pairs = []
    for split, n in _MNIST_SPLITS:
        arrays = {}
        for kind in ("images", "labels"):
            if path is None:
                name = _MNIST_FILES[kind].format(split=split) + ".gz"
                arrays[kind] = parse_idx(embedded_bytes(name, verify), name)
            else:
                name = _find_idx(os.fspath(path), split, kind)
                with open(name, "rb") as f:
                    arrays[kind] = parse_idx(f.read(), name)
        x, y = _check_mnist_pair(arrays["images"], arrays["labels"], f"MNIST {split}")
        if path is None and x.shape[0] != n:
            raise ValueError(f"embedded MNIST {split}: {x.shape[0]} images, expected {n}")
        pairs.append((x, y))
    groups = load_mnist_writers(verify) if path is None else (None, None)
    return ImageData(pairs[0][0], pairs[0][1], pairs[1][0], pairs[1][1], groups[0], groups[1])


def load_femnist(only_digits: bool = False, verify: bool = True) -> ImageData:
    """The embedded 212-writer LEAF FEMNIST subset, partitioned by writer.

    Parameters
    ----------
    only_digits : bool
        Keep only labels 0-9 (TFF's ``only_digits=True``); otherwise 62 classes: 0-9 digits,
        10-35 'A'-'Z', 36-61 'a'-'z'. Writers keep their index either way.

    Returns
    -------
    ImageData
        x_train (29224, 28, 28) uint8 with **255 = background** (LEAF convention; use
        ``255 - x`` for MNIST-like white-on-black), y_train (29224,) int64, x_test (3358, ...),
        groups_train/groups_test (N,) int64 indices into group_names (212,) LEAF writer ids.
        With ``only_digits``: 20580 train and 2314 test examples.
    """
    name = "femnist_leaf_212writers.npz"
    raw = embedded_bytes(name, verify)
    d = read_npz(raw, name)
    missing = sorted(set(_FEMNIST_ARRAYS) - d.keys())
    if missing:
        raise ValueError(f"embedded file {name} lacks arrays {missing}")
    keep_tr = d["y_train"] < 10 if only_digits else np.ones(len(d["y_train"]), bool)  # (N,)
    keep_te = d["y_test"] < 10 if only_digits else np.ones(len(d["y_test"]), bool)  # (M,)
    return ImageData(
        x_train=d["x_train"][keep_tr],  # (N, 28, 28)
        y_train=d["y_train"][keep_tr].astype(np.int64),  # (N,)
        x_test=d["x_test"][keep_te],  # (M, 28, 28)
        y_test=d["y_test"][keep_te].astype(np.int64),  # (M,)
        groups_train=d["writer_train"][keep_tr].astype(np.int64),  # (N,)
        groups_test=d["writer_test"][keep_te].astype(np.int64),  # (M,)
        group_names=d["writers"],  # (G,)
    )
