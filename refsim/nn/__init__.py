"""refsim.nn: hand-written layers (each with a loop oracle), the reference models, and
converters to PyTorch and Keras layouts. See ``docs/nn.md``."""

from refsim.nn.chunk_threads import ChunkThreads
from refsim.nn.convert import (from_keras_weights, from_torch_state_dict, to_keras_weights,
                               to_torch_state_dict)
from refsim.nn.model import Conv2D, Dense, Flatten, MaxPool2D, Model, ParamSpec, ReLU, sgd_step
from refsim.nn.models import cnn_cifar, cnn_mnist, logistic, mlp_2nn

__all__ = [
    "Model", "ParamSpec", "Conv2D", "MaxPool2D", "ReLU", "Flatten", "Dense", "sgd_step",
    "cnn_mnist", "mlp_2nn", "logistic", "cnn_cifar", "ChunkThreads",
    "to_torch_state_dict", "from_torch_state_dict", "to_keras_weights", "from_keras_weights",
]
