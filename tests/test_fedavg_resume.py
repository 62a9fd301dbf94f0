"""Checkpoint and resume: an interrupted run resumed from its checkpoint is bit-identical."""

import os

import numpy as np
import pytest

from refsim.compress import Codec, QuantizerConfig
from refsim.data import load_mnist
from refsim.fedavg import (FedAvgConfig, ServerOpt, ServerOptConfig, from_images, metrics_csv,
                           run_fedavg)
from refsim.fedavg.storage import atomic_write_bytes, load_checkpoint
from refsim.nn import logistic

SIZES = [30, 12, 45, 21, 8, 34]


class _Interrupt(Exception):
    pass


def _setup():
    data = from_images(load_mnist(), np.float32, train_limit=sum(SIZES), test_limit=200)
    ends = np.cumsum(SIZES)
    parts = [np.arange(e - n, e) for n, e in zip(SIZES, ends)]
    cfg = FedAvgConfig(fraction=0.5, epochs=1, batch_size=4, lr=0.1, rounds=5, seed=3,
                       server=ServerOptConfig(ServerOpt.MOMENTUM, lr=1.0, momentum=0.5),
                       codec=Codec(QuantizerConfig(8, stochastic=True), huffman=True))
    return cfg, data, parts


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    cfg, data, parts = _setup()
    full = run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path / "a")

    def stop_after_2(row):
        if row.round == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path / "b", on_round=stop_after_2)
    done, _, state, _ = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert done == 2 and set(state) == {"v"}  # the momentum buffer is checkpointed too
    seen = []
    resumed = run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path / "b", resume=True,
                         on_round=lambda r: seen.append(r.round))
    assert seen == [3, 4, 5]
    np.testing.assert_array_equal(resumed.params, full.params)
    assert metrics_csv(resumed.rounds) == metrics_csv(full.rounds)
    # Without resume=True the run starts over (and is again identical).
    again = run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path / "b")
    np.testing.assert_array_equal(again.params, full.params)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    cfg, data, parts = _setup()
    run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path)
    other = FedAvgConfig(fraction=0.5, epochs=1, batch_size=4, lr=0.2, rounds=5, seed=3)
    with pytest.raises(ValueError, match="different run"):
        run_fedavg(other, logistic(), data, parts, run_dir=tmp_path, resume=True)


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["x.bin"]
