"""Datasets and client splits for refsim (layer 1: imports only numpy, scipy, refsim.backend).

Embedded, no network needed: MNIST (LeCun et al. 1998) with QMNIST writer ids (Yadav & Bottou,
NeurIPS 2019) and a 212-writer LEAF FEMNIST subset (Caldas et al. 2018). Readers for data a user
brings: IDX, Keras ``mnist.npz``, CIFAR-10 python batches, LEAF JSON. Partitioners in
``refsim.data.partition``; their statistics in ``refsim.data.stats``; a client's minibatch order
in ``refsim.data.batching``. Sources, licences and algorithms: ``docs/data.md``.
"""

from refsim.data import partition
from refsim.data.batching import batch_order, client_batches, num_batches
from refsim.data.cifar import load_cifar10, read_cifar10_batch
from refsim.data.datasets import ImageData, load_femnist, load_mnist, load_mnist_writers
from refsim.data.idx import encode_idx, parse_idx, read_idx
from refsim.data.leaf import LeafData, leaf_to_uint8, read_leaf_json
from refsim.data.stats import PartitionStats, label_matrix_png, partition_stats, summary
from refsim.data.synthetic import SyntheticData, synthetic
from refsim.data.transforms import MNIST_MEAN, MNIST_STD, invert, standardize, to_float

__all__ = [
    "partition",
    "ImageData", "load_mnist", "load_mnist_writers", "load_femnist",
    "parse_idx", "read_idx", "encode_idx",
    "load_cifar10", "read_cifar10_batch",
    "LeafData", "read_leaf_json", "leaf_to_uint8",
    "SyntheticData", "synthetic",
    "to_float", "standardize", "invert", "MNIST_MEAN", "MNIST_STD",
    "PartitionStats", "partition_stats", "summary", "label_matrix_png",
    "batch_order", "client_batches", "num_batches",
]
