"""The proof of ``refsim.flower``: a real Flower deployment (a SuperLink and 3 SuperNodes on
127.0.0.1, insecure, the commands ``refsim flower-app`` prints) runs 2 rounds of the logistic
model with 8-bit quantized, Huffman-coded updates, and its final weights and metrics.csv equal
the in-process ``run_fedavg`` of the same config and seed, bit for bit.

C = 0.67 of K = 3 samples two clients per round, {1, 2} then {0, 2} for seed 0, so the server
must apply refsim's sampling rule to the right nodes. The same deployment then runs the features
beyond plain FedAvg (client optimizers with kept states, trace, checkpoint, resume), each equal
to the in-process run. Deselect with ``-m "not flower_deploy"``; skipped when flwr is absent.
About 40 s on 2 cores for the first run and 20 s for each further one, most of it Flower's
fixed polling intervals (docs/scale-out.md). Uses Flower's deployment runtime only (no Ray
simulation, which would bind every interface).
"""

import json
import os

import numpy as np
import pytest

pytest.importorskip("flwr", reason="needs Flower: pip install 'refsim[flower]'")

from flower_local import (LocalDeployment, _descendants, is_loopback,  # noqa: E402
                          listening_sockets)  # (tests/ is on sys.path under pytest)

from checks import assert_same_checkpoint, assert_same_trace  # noqa: E402

from refsim.cli.run_settings import make_partition  # noqa: E402
from refsim.fedavg import metrics_csv, run_fedavg  # noqa: E402
from refsim.fedavg.storage import load_checkpoint  # noqa: E402
from refsim.flower.settings import RUN_CONFIG, app_settings, load_data  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.flower_deploy]

SMALL = {"model": "logistic", "partition": "iid", "codec": "quant-huffman", "bits": 8,
         "fraction": 0.67, "epochs": 1, "batch-size": 20, "lr": 0.1, "rounds": 2,
         "train-limit": 3000, "test-limit": 1000, "seed": 0, "timeout": 90.0}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One SuperLink and 3 SuperNodes for every test of the module (each submits its runs)."""
    d = LocalDeployment(tmp_path_factory.mktemp("deployment"), nodes=3)
    try:
        d.start()
        yield d
    finally:
        d.stop()  # every process started, and what they started, by PID


def _in_process(s, **kwargs):
    """run_fedavg of the app's settings on refsim run's partition, K = 3."""
    data = load_data(s)
    partition = make_partition("iid", {"seed": s.config.seed, "clients": 3,
                                       "shards_per_client": 2}, data.y_train, None)
    return run_fedavg(s.config, s.model(), data, partition, **kwargs)


def test_three_supernodes_give_the_in_process_run_bit_for_bit(deployment, tmp_path):
    run_config = {**RUN_CONFIG, **SMALL, "out-dir": str(tmp_path / "out")}
    s = app_settings(run_config)
    deployment.submit(run_config)
    expected = _in_process(s)  # the in-process run of the same config, while Flower works
    out = deployment.wait(timeout=110)
    pids = [q for p in deployment.procs for q in (p.pid, *_descendants(p.pid))]
    heard = listening_sockets(pids)  # the SuperLink's and SuperNodes' servers

    assert deployment.port in {port for _, port, _ in heard}, heard
    assert len(heard) >= 4 and all(is_loopback(a) for a, _, _ in heard), sorted(heard)
    assert [r.clients for r in expected.rounds] == [(1, 2), (0, 2)]  # sampling matters
    assert (tmp_path / "out" / "metrics.csv").read_text() == metrics_csv(expected.rounds)
    np.testing.assert_array_equal(np.load(os.path.join(out, "final_weights.npy")),
                                  expected.params)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_clients"] == 3 and len(set(summary["nodes"].values())) == 3
    assert summary["config"] == s.config.to_dict()
    assert summary["final_accuracy"] == expected.rounds[-1].test_accuracy
    assert [r["round"] for r in summary["timing"]["per_round"]] == [1, 2]
    coded = expected.rounds[-1].uplink_bits_cum
    assert coded < 0.3 * 32 * s.model().num_params * 4  # 4 Huffman-coded updates, not floats


def test_kept_client_optimizer_states_trace_and_resume_on_the_deployment(deployment, tmp_path):
    """Adam with kept states and the trace: the in-process files and checkpoint. Then an
    in-process run stopped after round 1 is resumed by the deployment (resume = true): the
    kept states come from the checkpoint, and the result is the uninterrupted run's."""
    opt = {"client-opt": "adam", "lr": 0.01, "client-opt-state": "keep", "rounds": 3}
    run_config = {**RUN_CONFIG, **SMALL, **opt, "trace": True, "trace-every": 2,
                  "out-dir": str(tmp_path / "out")}
    s = app_settings(run_config)
    deployment.submit(run_config)
    expected = _in_process(s, run_dir=tmp_path / "local", trace=True, trace_every=2)
    out = deployment.wait(timeout=110)
    assert (tmp_path / "out" / "metrics.csv").read_text() == metrics_csv(expected.rounds)
    np.testing.assert_array_equal(np.load(os.path.join(out, "final_weights.npy")),
                                  expected.params)
    assert_same_trace(tmp_path / "out" / "trace", tmp_path / "local" / "trace")
    assert_same_checkpoint(tmp_path / "out" / "checkpoint.npz",
                           tmp_path / "local" / "checkpoint.npz")
    assert any(k.endswith(".exp_avg") for k in
               load_checkpoint(tmp_path / "out" / "checkpoint.npz")[2])

    def stop_after_1(row):
        if row.round == 1:
            raise KeyboardInterrupt

    resume = {**RUN_CONFIG, **SMALL, **opt, "resume": True, "out-dir": str(tmp_path / "resumed")}
    with pytest.raises(KeyboardInterrupt):
        _in_process(app_settings(resume), run_dir=tmp_path / "resumed", on_round=stop_after_1)
    deployment.submit(resume)
    out = deployment.wait(timeout=110)
    assert (tmp_path / "resumed" / "metrics.csv").read_text() == metrics_csv(expected.rounds)
    np.testing.assert_array_equal(np.load(os.path.join(out, "final_weights.npy")),
                                  expected.params)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["resumed_after_round"] == 1
    assert [r["round"] for r in summary["timing"]["per_round"]] == [2, 3]
