"""Checkpoint and resume: an interrupted run resumed from its checkpoint is bit-identical, a
real `refsim run` killed with SIGKILL mid-round included; a checkpoint that does not fit its
run is refused; one `refsim run` per run directory."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refsim.compress import Codec, QuantizerConfig
from refsim.data import load_mnist
from refsim.fedavg import (FedAvgConfig, ServerOpt, ServerOptConfig, from_images, metrics_csv,
                           run_fedavg)
from refsim.fedavg.run_lock import LOCK_FILE
from refsim.fedavg.storage import atomic_write_bytes, load_checkpoint, save_checkpoint
from refsim.nn import logistic
from refsim.safe_npz import read_npz

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


def test_resume_refuses_a_checkpoint_that_does_not_fit_the_run(tmp_path):
    """A checkpoint with the run's meta but other arrays, or a round beyond the run's (as a
    hand-edited file might be), is a ValueError naming it, not a failure deep in a round."""
    cfg, data, parts = _setup()
    run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path)
    path = tmp_path / "checkpoint.npz"
    done, params, state, meta = load_checkpoint(path)
    meta = {k: v for k, v in meta.items() if k != "format_version"}
    save_checkpoint(path, done, params[:-1], state, meta)
    with pytest.raises(ValueError, match=r"checkpoint.npz: arrays .* do not fit this run's"):
        run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path, resume=True)
    save_checkpoint(path, done, params, {}, meta)  # the momentum buffer missing
    with pytest.raises(ValueError, match="do not fit this run's"):
        run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path, resume=True)
    save_checkpoint(path, 7, params, state, meta)
    with pytest.raises(ValueError, match="round 7 with 5 metrics rows does not fit a run of 5 "
                                         "rounds; delete it to start over"):
        run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path, resume=True)
    np.savez(path, params=params)
    with pytest.raises(ValueError, match=r"is not a refsim checkpoint \(no meta, round array\)"):
        run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path, resume=True)


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["x.bin"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


# -- kill -9 mid-round, then --resume: a real `refsim run` in a real process ------------------

KILL_ARGS = ["run", "--model", "2nn", "--partition", "iid", "--codec", "quant-huffman",
             "--clients", "10", "--fraction", "0.3", "--rounds", "8", "--train-limit", "3000",
             "--test-limit", "300", "--plot", "no", "--trace"]
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _refsim(out, *extra) -> list[str]:
    return [sys.executable, "-m", "refsim.cli", *KILL_ARGS, "--out", str(out), *extra]


def _kill_after_round(out, k: int, *extra) -> int:
    """Start ``refsim run``, SIGKILL it as soon as it prints round k (inside round k + 1: a
    round of this run takes ~0.1 s on an idle machine, so waiting longer can miss it), return
    its PID."""
    proc = subprocess.Popen(_refsim(out, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=ROOT)
    for line in proc.stdout:
        if f"] round {k}/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return proc.pid


@pytest.mark.slow
def test_resume_after_kill_9_mid_round_is_bit_identical(tmp_path):
    full = subprocess.run(_refsim(tmp_path / "full", "--quiet"), env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    out, run = tmp_path / "killed", "iid-quant-huffman"
    first = _kill_after_round(out, 1)
    done = load_checkpoint(out / run / "checkpoint.npz")[0]
    assert 1 <= done < 8
    lock = json.loads((out / LOCK_FILE).read_text())  # left behind by the killed run
    assert lock["pid"] == first
    # Resumed, and killed again mid-round; then resumed to the end.
    second = _kill_after_round(out, done + 1, "--resume")
    assert done < load_checkpoint(out / run / "checkpoint.npz")[0] < 8
    resumed = subprocess.run(_refsim(out, "--resume", "--quiet"), env=ENV, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of {out} left by PID {second} on host" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    for name in ("final_weights.npy", "metrics.csv"):
        assert (out / run / name).read_bytes() == (tmp_path / "full" / run / name).read_bytes()
    trace, trace_full = sorted((out / run / "trace").iterdir()), \
        sorted((tmp_path / "full" / run / "trace").iterdir())
    assert [p.name for p in trace] == [p.name for p in trace_full]
    for a, b in zip(trace, trace_full):
        if a.suffix == ".npz":  # np.savez stamps the time into the zip: compare the arrays
            x, y = read_npz(a), read_npz(b)
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        else:
            assert a.read_bytes() == b.read_bytes(), a.name
    assert not (out / LOCK_FILE).exists() and not (out / run / LOCK_FILE).exists()
    assert not [p for p in (out / run).iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_a_second_refsim_run_on_a_running_directory_exits_2_naming_its_pid(tmp_path):
    proc = subprocess.Popen(_refsim(tmp_path, "--rounds", "1000"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=ROOT)
    try:
        assert "] round 1/1000" in proc.stdout.readline()
        second = subprocess.run(_refsim(tmp_path, "--rounds", "1000"), env=ENV, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert proc.poll() is None  # the first one is still running
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert second.stderr.startswith(f"refsim run: error: {tmp_path} is in use by another "
                                    f"refsim run (PID {proc.pid} on host ")
