"""``bench/flower_sim.py`` under ``pytest bench/`` (timing disabled): one cheap sweep point
(the 2NN, K = 10, m = 2, 2 rounds, 1 repetition) so that the script stays runnable; the
figures of docs/benchmarks.md come from running the script itself. Skipped without Ray."""

import importlib.util
import os
import sys

import pytest

if importlib.util.find_spec("ray") is None or importlib.util.find_spec("flwr") is None:
    pytest.skip("needs Flower's simulation extra: pip install 'refsim[flower]'",
                allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
import flower_sim  # noqa: E402


def test_flower_sim_bench_runs():
    r = flower_sim.main(["--rounds", "3", "--reps", "1", "--models", "2nn", "--ks", "10",
                         "--ms", "--m", "2", "--train-limit", "600"])
    assert set(r["models"]["2nn"]) == {"local-1t", "local-2t", "sim"}
    assert all(v > 0 for v in r["models"]["2nn"].values()) and r["K"][10]["sim"] > 0
