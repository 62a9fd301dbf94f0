"""CIFAR-10 batch files for tests, in the original format (Python 2 pickles of a dict of
bytes keys, NumPy globals under ``numpy.core``), as in cifar-10-python.tar.gz."""

import io
import pickle
import struct

import numpy as np

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


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


def write_cifar_folder(folder, n_per_batch: int, seed: int) -> dict:
    """A ``cifar-10-batches-py`` folder of random images: five training batches and the test
    batch of ``n_per_batch`` images each, and batches.meta. Returns {name: (data, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name in BATCHES:
        batch, data, labels = make_batch(rng, n_per_batch)
        (folder / name).write_bytes(py2_pickle(batch))
        expected[name] = (data, labels)
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane"]}))
    return expected
