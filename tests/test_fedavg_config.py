"""FedAvgConfig validation: every bad value names its field and the allowed range."""

import numpy as np
import pytest

from refsim.compress import Codec, QuantizerConfig
from refsim.fedavg import (DType, FedAvgConfig, ServerOpt, ServerOptConfig, Weighting,
                           clients_per_round)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"fraction": -0.1}, ValueError, r"fraction must be in \[0.0, 1.0\]"),
    ({"fraction": 1.01}, ValueError, r"fraction must be in \[0.0, 1.0\]"),
    ({"fraction": "0.1"}, TypeError, "fraction must be a number"),
    ({"epochs": 0}, ValueError, "epochs must be >= 1"),
    ({"epochs": 1.5}, TypeError, "epochs must be an integer"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"lr": 0.0}, ValueError, r"lr must be in \(0.0, inf\)"),
    ({"lr": float("nan")}, ValueError, "lr must be in"),
    ({"lr_decay": 1.5}, ValueError, r"lr_decay must be in \(0.0, 1.0\]"),
    ({"rounds": 0}, ValueError, "rounds must be >= 1"),
    ({"weighting": "examples"}, TypeError, "weighting must be one of Weighting.EXAMPLES"),
    ({"dtype": np.float64}, TypeError, "dtype must be one of DType.FLOAT32"),
    ({"seed": 2**32}, ValueError, r"seed must be in \[0, 4294967295\]"),
    ({"seed": -1}, ValueError, "seed must be in"),
    ({"eval_every": 0}, ValueError, "eval_every must be >= 1"),
    ({"codec": "huffman"}, TypeError, "codec must be a refsim.compress.Codec"),
    ({"server": {"lr": 1.0}}, TypeError, "server must be a ServerOptConfig"),
])
def test_invalid_values_name_the_field(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        FedAvgConfig(**kwargs)


def test_server_config_validation():
    with pytest.raises(ValueError, match=r"server.momentum must be in \[0.0, 1.0\)"):
        ServerOptConfig(ServerOpt.MOMENTUM, momentum=1.0)
    with pytest.raises(ValueError, match="server.momentum must be 0 with ServerOpt.SGD"):
        ServerOptConfig(ServerOpt.SGD, momentum=0.9)
    with pytest.raises(ValueError, match="server.lr"):
        ServerOptConfig(lr=0.0)


def test_valid_config_is_frozen_and_describes_itself():
    cfg = FedAvgConfig(batch_size=None, dtype=DType.FLOAT64, weighting=Weighting.UNIFORM,
                       codec=Codec(QuantizerConfig(8)), lr_decay=0.5, lr=0.2)
    with pytest.raises(AttributeError):
        cfg.lr = 1.0
    d = cfg.to_dict()
    assert d["dtype"] == "float64" and d["weighting"] == "uniform" and d["batch_size"] is None
    assert (d["server"]["kind"], d["server"]["lr"], d["server"]["momentum"]) == ("sgd", 1.0, 0.0)
    assert cfg.client_lr(1) == 0.2 and cfg.client_lr(3) == 0.05


@pytest.mark.parametrize("c, k, m", [(0.0, 100, 1), (0.1, 100, 10), (0.2, 100, 20),
                                     (1.0, 100, 100), (0.05, 10, 1), (0.5, 3, 1), (1.0, 1, 1)])
def test_clients_per_round_is_max_floor_ck_1(c, k, m):
    assert clients_per_round(c, k) == m
