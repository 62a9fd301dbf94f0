"""Derive refsim's compact MNIST writer-id files from QMNIST (Yadav & Bottou, NeurIPS 2019).

QMNIST (github.com/facebookresearch/qmnist) reconstructed the NIST provenance of every MNIST
digit. Its ``qmnist-{train,test}-labels-idx2-int.gz`` hold one row of 8 int32 per digit:
column 0 the class, column 2 the NIST writer id. The 60000 train rows are the MNIST training
set in order and the first 10000 test rows are MNIST t10k in order (QMNIST README; checked
below against the MNIST labels row by row). This script keeps only column 2 as IDX int16
(writer ids are at most 2599) and writes, gzip level 9 with mtime 0 (reproducible bytes):

    refsim/data/embedded/train-writers-idx1-short.gz   (60000,)
    refsim/data/embedded/t10k-writers-idx1-short.gz    (10000,)

Usage (from the repository root)::

    python refsim/data/embedded/make_mnist_writers.py [QMNIST_DIR] [MNIST_DIR] [OUT_DIR]

defaults: ../shared/data/mnist, ../shared/data/mnist, refsim/data/embedded. Print the MD5 of the
outputs; ``refsim/data/datasets.py::EMBEDDED_MD5`` must list the same values.
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

from refsim.data.idx import encode_idx, read_idx

__all__ = ["writer_ids", "main"]

QMNIST_WRITER_COLUMN = 2
QMNIST_CLASS_COLUMN = 0


def writer_ids(qmnist_labels: np.ndarray, mnist_labels: np.ndarray) -> np.ndarray:
    """Column 2 of the first ``len(mnist_labels)`` QMNIST rows, after checking the labels agree.

    qmnist_labels : ndarray, shape (M, 8) int32;  mnist_labels : ndarray, shape (N,), N <= M
    returns : ndarray, shape (N,) int16
    """
    n = len(mnist_labels)
    rows = qmnist_labels[:n]  # (N, 8)
    mismatch = np.flatnonzero(rows[:, QMNIST_CLASS_COLUMN] != mnist_labels)
    if mismatch.size:
        raise ValueError(f"QMNIST and MNIST labels differ at {mismatch.size} rows, "
                         f"first at row {mismatch[0]}")
    ids = rows[:, QMNIST_WRITER_COLUMN]  # (N,)
    if ids.min() < 0 or ids.max() > np.iinfo(np.int16).max:
        raise ValueError(f"writer ids outside int16: [{ids.min()}, {ids.max()}]")
    return ids.astype(np.int16)


def main(argv: list[str]) -> int:
    qmnist_dir = argv[0] if len(argv) > 0 else os.path.join("..", "shared", "data", "mnist")
    mnist_dir = argv[1] if len(argv) > 1 else qmnist_dir
    out_dir = argv[2] if len(argv) > 2 else os.path.join("refsim", "data", "embedded")
    for split, qname in [("train", "qmnist-train"), ("t10k", "qmnist-test")]:
        q = read_idx(os.path.join(qmnist_dir, f"{qname}-labels-idx2-int.gz"))  # (M, 8)
        y = read_idx(os.path.join(mnist_dir, f"{split}-labels-idx1-ubyte.gz"))  # (N,)
        ids = writer_ids(q, y)
        data = encode_idx(ids, compress=True)
        path = os.path.join(out_dir, f"{split}-writers-idx1-short.gz")
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {len(ids)} digits, {len(np.unique(ids))} writers, {len(data)} bytes, "
              f"md5 {hashlib.md5(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
