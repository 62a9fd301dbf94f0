"""The models, codecs and partitions a run names by a word: ``refsim run``'s flags and the
Flower app's run config use the same vocabulary, and this module is its one meaning.

Models (``MODELS``): ``2nn`` the paper's MNIST 2NN (``mlp_2nn``), ``cnn`` its MNIST CNN
(``cnn_mnist``), ``logistic`` TFF's softmax regression, ``cnn-cifar`` the Flower CIFAR-10
tutorial's ``Net`` (``cnn_cifar``, 3x32x32 inputs).

Codecs (``codec_named``), for the uplink and the downlink:

    raw            no codec: the float vector itself (the loop's ``codec=None``)
    float          ``Codec(None)``: raw floats inside refsim's self-describing format
    quant          ``Codec(QuantizerConfig(bits, stochastic=True))``: b-bit stochastic
                   quantization, bit-packed
    quant-huffman  the same levels, Huffman-coded (``huffman=True``)
    topk-huffman   ``Codec(TopKConfig(fraction=0.01, bits=bits), huffman=True)``: the 1%
                   largest entries of each tensor, their indices gap-coded, their magnitudes
                   quantized to b bits (stochastic) and Huffman-coded with their signs. The
                   loop sends each round's update without a residual (no error feedback)

Datasets (``images_named``), the uint8 images as a run trains on them:

    mnist    the embedded MNIST with its QMNIST writers (train and test writers disjoint)
    femnist  the embedded LEAF FEMNIST subset, digits only (the models have 10 outputs),
             inverted to MNIST's white-on-black (255 - x); train and test share writers
    cifar10  the ``cifar-10-batches-py`` folder ``data_dir`` (``load_cifar10``), no writers

Partitions (``partition_named``) of the training labels over K clients, with
``make_rng(seed, Purpose.PARTITION)``:

    iid      ``refsim.data.partition.iid``: shuffled, equal sizes
    shards   ``partition.shards``: the FedAvg paper's pathological non-IID split (sorted by
             label, 2K shards, ``shards_per_client`` each)
    writers  ``partition.by_group`` of the writer ids: one client per writer (K = the number of
             writers; no rng)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refsim.backend import Purpose, make_rng
from refsim.compress import Codec, QuantizerConfig, TopKConfig
from refsim.data import ImageData, load_cifar10, load_femnist, load_mnist, partition
from refsim.nn import cnn_cifar, cnn_mnist, logistic, mlp_2nn

__all__ = ["MODELS", "CODEC_NAMES", "DATASET_NAMES", "PARTITION_NAMES", "codec_named",
           "images_named", "partition_named", "writer_test_sets"]

MODELS = {"2nn": mlp_2nn, "cnn": cnn_mnist, "logistic": logistic, "cnn-cifar": cnn_cifar}  # name -> model factory
CODEC_NAMES = ("raw", "float", "quant", "quant-huffman", "topk-huffman")
DATASET_NAMES = ("mnist", "femnist", "cifar10")
PARTITION_NAMES = ("iid", "shards", "writers")


def images_named(name: str, data_dir: str | None = None) -> ImageData:
    """The uint8 images of the dataset called ``name`` (see the module docstring); ValueError
    naming the file for a damaged or missing CIFAR-10 batch."""
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset {name!r} is not one of {', '.join(DATASET_NAMES)}")
    if name == "mnist":
        return load_mnist()
    if name == "cifar10":
        return load_cifar10(data_dir)
    images = load_femnist(only_digits=True)
    return dataclasses.replace(images, x_train=255 - images.x_train, x_test=255 - images.x_test)


def codec_named(name: str, bits: int) -> Codec | None:
    """The codec called ``name`` (see the module docstring), quantizing to ``bits`` bits.

    >>> codec_named("raw", 8) is None, codec_named("quant-huffman", 4).huffman
    (True, True)
    """
    if name not in CODEC_NAMES:
        raise ValueError(f"codec {name!r} is not one of {', '.join(CODEC_NAMES)}")
    if name == "raw":
        return None
    if name == "float":
        return Codec(None)
    if name == "topk-huffman":
        return Codec(TopKConfig(fraction=0.01, bits=bits), huffman=True)
    return Codec(QuantizerConfig(bits, stochastic=True), huffman=name == "quant-huffman")


def partition_named(name: str, labels: np.ndarray, num_clients: int, seed: int,
                    shards_per_client: int = 2, writers: np.ndarray | None = None
                    ) -> list[np.ndarray]:
    """The partition called ``name`` of ``labels`` (N,) over ``num_clients`` clients (not used
    by ``writers``, whose K is the number of distinct ``writers`` (N,))."""
    if name not in PARTITION_NAMES:
        raise ValueError(f"partition {name!r} is not one of {', '.join(PARTITION_NAMES)}")
    if name == "writers":
        if writers is None:
            raise ValueError("the writers partition needs the writer of every example")
        return partition.by_group(writers)
    rng = make_rng(seed, Purpose.PARTITION)
    if name == "iid":
        return partition.iid(labels, num_clients, rng)
    return partition.shards(labels, num_clients, shards_per_client, rng)


def writer_test_sets(name: str, writers_train: np.ndarray | None,
                     writers_test: np.ndarray | None) -> list[np.ndarray] | None:
    """Per-client test sets where the dataset has them: for the ``writers`` partition of a
    dataset whose test writers are its train writers (FEMNIST), client k (the k-th writer in
    ascending id) is evaluated on that writer's test examples (indices into the test set);
    None otherwise (MNIST's QMNIST writers of the test set are not its train writers).

    >>> writer_test_sets("writers", np.array([3, 3, 5]), np.array([5, 3, 5]))
    [array([1]), array([0, 2])]
    >>> writer_test_sets("iid", np.array([3, 5]), np.array([3])) is None
    True
    """
    if name != "writers" or writers_train is None or writers_test is None:
        return None
    if not np.isin(writers_test, writers_train).all():
        return None
    return [np.flatnonzero(writers_test == g) for g in np.unique(writers_train)]  # (n_k,)
