"""The four reference networks, each checked against its published parameter count.

* ``cnn_mnist``: the CNN of McMahan et al., "Communication-Efficient Learning of Deep
  Networks from Decentralized Data", AISTATS 2017 (arXiv:1602.05629), Sec. 3: "two 5x5
  convolution layers (the first with 32 channels, the second with 64, each followed with
  2x2 max pooling), a fully connected layer with 512 units and ReLu activation, and a final
  softmax output layer (1,663,370 total parameters)". 'same' padding, ReLU after each conv.
* ``mlp_2nn``: the paper's "2NN", 784-200-200-10 with ReLU (199,210 parameters).
* ``logistic``: multinomial logistic regression 784-10, the model of TFF's "Federated
  Learning for Image Classification" tutorial (7,850 parameters).
* ``cnn_cifar``: the ``Net`` of the Flower and PyTorch CIFAR-10 tutorials: conv 6@5x5,
  pool, conv 16@5x5, pool, dense 120, 84, 10, ReLU between ('valid' padding; 62,006).

All MNIST models take NCHW images (N, 1, 28, 28); the 2NN and logistic model flatten first.
"""

from __future__ import annotations

from refsim.nn.model import Conv2D, Dense, Flatten, MaxPool2D, Model, ReLU

__all__ = ["cnn_mnist", "mlp_2nn", "logistic", "cnn_cifar"]


def _checked(model: Model, expected: int) -> Model:
    if model.num_params != expected:  # a guard against editing a model by accident
        raise RuntimeError(f"{model.name} has {model.num_params} parameters, expected {expected}")
    return model


def cnn_mnist() -> Model:
    """The FedAvg paper's MNIST CNN: 1,663,370 parameters."""
    return _checked(Model("cnn_mnist", (1, 28, 28), (
        Conv2D("conv1", 1, 32, 5, "same"), ReLU(), MaxPool2D("valid"),    # (32, 14, 14)
        Conv2D("conv2", 32, 64, 5, "same"), ReLU(), MaxPool2D("valid"),   # (64, 7, 7)
        Flatten(),                                                        # (3136,)
        Dense("fc1", 64 * 7 * 7, 512), ReLU(),
        Dense("fc2", 512, 10),
    )), 1_663_370)


def mlp_2nn() -> Model:
    """The FedAvg paper's 2NN (two hidden layers of 200 ReLU units): 199,210 parameters."""
    return _checked(Model("mlp_2nn", (1, 28, 28), (
        Flatten(),
        Dense("fc1", 784, 200), ReLU(),
        Dense("fc2", 200, 200), ReLU(),
        Dense("fc3", 200, 10),
    )), 199_210)


def logistic() -> Model:
    """Multinomial logistic regression on MNIST (the TFF tutorial model): 7,850 parameters."""
    return _checked(Model("logistic", (1, 28, 28), (
        Flatten(),
        Dense("fc", 784, 10),
    )), 7_850)


def cnn_cifar() -> Model:
    """The Flower/PyTorch CIFAR-10 tutorial ``Net`` on (N, 3, 32, 32): 62,006 parameters."""
    return _checked(Model("cnn_cifar", (3, 32, 32), (
        Conv2D("conv1", 3, 6, 5, "valid"), ReLU(), MaxPool2D("valid"),    # (6, 14, 14)
        Conv2D("conv2", 6, 16, 5, "valid"), ReLU(), MaxPool2D("valid"),   # (16, 5, 5)
        Flatten(),                                                        # (400,)
        Dense("fc1", 16 * 5 * 5, 120), ReLU(),
        Dense("fc2", 120, 84), ReLU(),
        Dense("fc3", 84, 10),
    )), 62_006)
