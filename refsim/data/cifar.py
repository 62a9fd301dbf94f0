"""Reader for the CIFAR-10 "python version" batches, with a restricted unpickler.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, 2009; format
as documented at https://www.cs.toronto.edu/~kriz/cifar.html: each of ``data_batch_1..5`` and
``test_batch`` is a Python 2 pickle of a dict with ``data`` (10000 x 3072 uint8, each row the
1024 red, then 1024 green, then 1024 blue values of a 32x32 image, row-major) and ``labels``
(10000 ints in 0..9); ``batches.meta`` holds ``label_names``.

Pickles can run arbitrary code, so :class:`CifarUnpickler` resolves only the globals a NumPy
array needs (``_reconstruct``, ``ndarray``, ``dtype`` from numpy's multiarray, under the
numpy 1 and numpy 2 module names) and refuses every other global with ``ValueError``.
Everything else in the files is plain dicts, lists, ints and strings, which need no globals.
The 163 MB archive is not shipped; bring ``cifar-10-python.tar.gz`` or its extracted folder
(torchvision's ``CIFAR10(root, download=True)`` writes ``root/cifar-10-batches-py``).

Integrity: a batch of the published layout (10,000 images) must have the published MD5 sum
(``CIFAR10_MD5``, the sums torchvision checks), so a damaged copy of the real files is named
with the failed check before anything is decoded into a run. A CIFAR-format batch of any
other size (a subset, or the small synthetic folders the tests write) has no published sum;
it is decoded with every structural check only.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

from refsim.data.datasets import ImageData

__all__ = ["CIFAR10_MD5", "CifarUnpickler", "read_cifar10_batch", "load_cifar10"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}
_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = "test_batch"
# The published MD5 sums of the batch files of cifar-10-python.tar.gz (those torchvision's
# CIFAR10 checks); every published batch holds 10,000 images.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
PUBLISHED_BATCH_SIZE = 10_000


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only the NumPy array globals listed in ``_ALLOWED``."""

    def find_class(self, module: str, name: str):  # noqa: D102 - documented on the class
        target = _ALLOWED.get((module, name))
        if target is None:
            raise ValueError(f"refusing to unpickle global {module}.{name}: a CIFAR-10 batch "
                             "needs only NumPy arrays")
        target_module = __import__(target[0], fromlist=[target[1]])
        return getattr(target_module, target[1])


def _unpickle(raw: bytes, name: str) -> object:
    try:
        return CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{name}: not a readable CIFAR-10 pickle "
                         f"({type(err).__name__}: {err})") from None


def _key(d: dict, key: str) -> object:
    for k in (key.encode(), key):  # Python 2 pickles give bytes keys
        if k in d:
            return d[k]
    raise KeyError(key)


def read_cifar10_batch(raw: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode one batch file.

    Returns
    -------
    x : ndarray, shape (N, 3, 32, 32) uint8   (N, C, H, W), channels R, G, B
    y : ndarray, shape (N,) int64 in 0..9
    """
    batch = _unpickle(raw, name)
    if not isinstance(batch, dict):
        raise ValueError(f"{name}: expected a dict, got {type(batch).__name__}")
    try:
        data, labels = _key(batch, "data"), _key(batch, "labels")
    except KeyError as err:
        raise ValueError(f"{name}: missing key {err} (keys: {sorted(map(str, batch))})") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise ValueError(f"{name}: data must be a uint8 array (N, 3072), got {got}")
    y = np.asarray(labels)
    if y.shape != (data.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected {data.shape[0]} integer labels, "
                         f"got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{name}: labels outside 0..9: [{y.min()}, {y.max()}]")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)  # (N, 3, 32, 32), (N,)


def _read_members(path: str, names: list[str]) -> dict[str, bytes]:
    """Raw bytes of the named batch files, from a folder or a ``.tar.gz`` archive."""
    if os.path.isdir(path):
        out = {}
        for n in names:
            full = os.path.join(path, n)
            if not os.path.isfile(full):
                raise ValueError(f"{path}: CIFAR-10 batch {n} not found")
            with open(full, "rb") as f:
                out[n] = f.read()
        return out
    try:
        with tarfile.open(path, "r:*") as tar:
            by_base = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in by_base]
            if missing:
                raise ValueError(f"{path}: archive lacks CIFAR-10 batches {missing}")
            return {n: tar.extractfile(by_base[n]).read() for n in names}
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable CIFAR-10 folder or tar archive ({err})") from None


def _read_checked(raw: bytes, member: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_cifar10_batch`, then the published MD5 sum for a batch of the published
    size (a damaged real batch fails here even where its pickle still decodes)."""
    x, y = read_cifar10_batch(raw, name)
    if len(y) == PUBLISHED_BATCH_SIZE:
        digest = hashlib.md5(raw).hexdigest()
        if digest != CIFAR10_MD5[member]:
            raise ValueError(f"{name}: MD5 {digest} is not the published {CIFAR10_MD5[member]} "
                             "of this CIFAR-10 batch: the file is damaged; download "
                             "cifar-10-python.tar.gz again")
    return x, y


def load_cifar10(path: str | os.PathLike):
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py`` folder.

    Every batch is decoded with the restricted unpickler and checked (layout, dtype, labels);
    a batch of 10,000 images must also have its published MD5 sum (``CIFAR10_MD5``).
    A missing, damaged or foreign file raises ValueError naming the file and the check.

    Returns
    -------
    ImageData with x_train (50000, 3, 32, 32) uint8, y_train (50000,),
    x_test (10000, 3, 32, 32), y_test (10000,) for the real files (any N for smaller ones).
    """
    path = os.fspath(path)
    raw = _read_members(path, _TRAIN + [_TEST])
    train = [_read_checked(raw[n], n, f"{path}:{n}") for n in _TRAIN]
    x_test, y_test = _read_checked(raw[_TEST], _TEST, f"{path}:{_TEST}")
    return ImageData(x_train=np.concatenate([x for x, _ in train]),
                     y_train=np.concatenate([y for _, y in train]),
                     x_test=x_test, y_test=y_test)
