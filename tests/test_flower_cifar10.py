"""The Flower CIFAR-10 tutorial as refsim runs it (``--config flower_cifar10``), on synthetic
CIFAR-format folders written here (the real files are not shipped): preprocessing, the
federated evaluation share, the config, and one line for a missing or damaged folder."""

import json

import numpy as np
import pytest
from cifar_files import write_cifar_folder

from refsim import cli
from refsim.data import ImageData, load_cifar10
from refsim.fedavg import from_images


def test_normalize_is_torchvisions_to_tensor_then_normalize_bit_for_bit(tmp_path):
    torch = pytest.importorskip("torch")
    write_cifar_folder(tmp_path / "c", 7, seed=0)
    images = load_cifar10(tmp_path / "c")
    data = from_images(images, np.float32, normalize=(0.5, 0.5))
    assert data.x_train.shape == (35, 3, 32, 32) and data.x_train.dtype == np.float32
    # torchvision: ToTensor() = uint8 -> float32 / 255; Normalize = sub_(mean).div_(std)
    mean = torch.tensor([0.5] * 3)[:, None, None]
    x = torch.from_numpy(images.x_train).to(torch.float32).div(255).sub(mean).div(mean)
    np.testing.assert_array_equal(data.x_train, x.numpy())
    assert data.x_train.min() >= -1 and data.x_train.max() <= 1
    grey = ImageData(x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2, np.int64),
                     x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.zeros(1, np.int64))
    assert from_images(grey).x_train.shape == (2, 1, 28, 28)
