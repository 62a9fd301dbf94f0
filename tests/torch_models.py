"""The reference networks written out in PyTorch from their published descriptions (not
derived from refsim's layer list), shared by the PyTorch cross-checks (test_nn_torch.py,
test_validation_torch.py). Import it only after ``pytest.importorskip("torch")``."""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is a test-only cross-check")
nn, F = torch.nn, torch.nn.functional


class TorchCNNMnist(nn.Module):
    """McMahan et al. 2017: conv5x5@32 'same', pool, conv5x5@64 'same', pool, fc 512, fc 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class TorchMLP2NN(nn.Module):
    """McMahan et al. 2017 "2NN": 784-200-200-10 with ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 200), nn.Linear(200, 200), nn.Linear(200, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TorchLogistic(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


class TorchCifarNet(nn.Module):
    """The Flower / PyTorch CIFAR-10 tutorial ``Net``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
