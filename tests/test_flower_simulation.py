"""``refsim run --engine flower-sim``: the Flower app on Flower's Simulation Engine (Ray) gives
the in-process run's files bit for bit; what the app cannot do is refused with one line; and
``--ray-address`` runs through an existing Ray cluster (a local head on 127.0.0.1, stopped by
PID with every process it started).

Both runs of a comparison are ``refsim run`` child processes with one BLAS thread
(OpenBLAS's sums depend on its thread count: at 2 threads vs 1 the test loss of the same
weights differs in the 8th digit), the thread count ``--engine flower-sim`` gives its clients
at ``--client-cpus 1``. Client optimizers (their kept states), --trace and --resume give the
in-process files too. Ray tests: skipped when ray is absent; about 40 s and 30 s on 2 cores
(the bit-identity and Ray-head tests), 20-30 s each for the parity tests.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

pytest.importorskip("flwr", reason="needs Flower: pip install 'refsim[flower]'")

from checks import assert_same_checkpoint, assert_same_trace  # noqa: E402
from flower_local import (_alive, _descendants, free_port, is_loopback,  # noqa: E402
                          listening_sockets)

from refsim.cli.run_flower_sim import LOOPBACK_ENV  # noqa: E402

from refsim.fedavg.storage import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.flower
needs_ray = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("ray") is None,
    reason="needs Ray: pip install 'refsim[flower]' (flwr[simulation])")

BIN = os.path.dirname(sys.executable)
THREADS = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
# The 2NN at K = 100, C = 0.1, 3 rounds, on 6000 training examples (60 a client), 10% of
# each held out and half the clients in each federated evaluation.
SMALL = ["--model", "2nn", "--partition", "iid", "--codec", "quant-huffman", "--clients", "100",
         "--fraction", "0.1", "--rounds", "3", "--train-limit", "6000", "--test-limit", "1000",
         "--eval-holdout", "0.1", "--fraction-evaluate", "0.5", "--plot", "no", "--quiet"]


def _env() -> dict:
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **THREADS)


def _refsim(args, timeout=300, env=None, listeners=None) -> subprocess.CompletedProcess:
    """``refsim run ARGS`` in its own session; on timeout the whole session is killed (the
    CLI's engine child included), then TimeoutExpired. With a ``listeners`` set, every TCP
    socket its processes listen on while it runs is added to it ((address, port, name))."""
    argv = [os.path.join(BIN, "refsim"), "run", *args]
    proc = subprocess.Popen(argv, env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if listeners is None:
            out, err = proc.communicate(timeout=timeout)
        else:
            out, err = _watch_listeners(proc, timeout, listeners)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _watch_listeners(proc, timeout, listeners: set):
    """Wait for ``proc``, sampling the listening sockets of it and its descendants every
    0.2 s (Ray's servers live as long as the run)."""
    end = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > end:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        listeners |= {(a, port, _name(pid))
                      for a, port, pid in listening_sockets([proc.pid, *_descendants(proc.pid)])}
        time.sleep(0.2)
    return proc.communicate()


def _same_run(local: str, sim: str) -> None:
    for f in ("metrics.csv", "metrics.jsonl"):
        with open(os.path.join(local, f)) as a, open(os.path.join(sim, f)) as b:
            assert a.read() == b.read(), f
    w_local = np.load(os.path.join(local, "final_weights.npy"))
    w_sim = np.load(os.path.join(sim, "final_weights.npy"))
    assert w_local.dtype == w_sim.dtype
    np.testing.assert_array_equal(w_local, w_sim)
    with open(os.path.join(local, "summary.json")) as a, open(os.path.join(sim, "summary.json")) as b:
        s_local, s_sim = json.load(a), json.load(b)
    for key in ("final_accuracy", "best_accuracy", "rounds_to_target", "uplink_bits",
                "total_broadcast_bits", "config", "num_clients", "seed", "model"):
        assert s_local[key] == s_sim[key], key


@needs_ray
def test_simulation_engine_gives_the_in_process_run_bit_for_bit(tmp_path):
    local = _refsim([*SMALL, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr
    listeners = set()
    sim = _refsim([*SMALL, "--engine", "flower-sim", "--client-cpus", "1",
                   "--out", str(tmp_path / "sim")], listeners=listeners)
    assert sim.returncode == 0, sim.stderr[-3000:]
    names = {name for _, _, name in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners  # the probe saw Ray's servers
    assert all(is_loopback(a) for a, _, _ in listeners), sorted(listeners)
    _same_run(str(tmp_path / "local" / "iid-quant-huffman"),
              str(tmp_path / "sim" / "iid-quant-huffman"))
    for f in ("comparison.txt", "comparison.json"):  # refsim run's table of the runs
        assert (tmp_path / "local" / f).read_text() == (tmp_path / "sim" / f).read_text(), f
    with open(tmp_path / "sim" / "iid-quant-huffman" / "summary.json") as f:
        summary = json.load(f)
    assert summary["num_clients"] == 100 and len(set(summary["nodes"].values())) == 100
    assert [r["round"] for r in summary["timing"]["per_round"]] == [1, 2, 3]


@needs_ray
def test_femnist_by_writer_runs_207_virtual_supernodes_bit_for_bit(tmp_path):
    """The paper-scale non-IID setting of issue 15: one client per FEMNIST writer (K = 207),
    each evaluated on its writer's own test set."""
    args = ["--dataset", "femnist", "--partition", "writers", "--model", "2nn", "--codec",
            "quant-huffman", "--fraction", "0.05", "--rounds", "2", "--plot", "yes", "--quiet"]
    local = _refsim([*args, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr
    sim = _refsim([*args, "--engine", "flower-sim", "--out", str(tmp_path / "sim")])
    assert sim.returncode == 0, sim.stderr[-3000:]
    _same_run(str(tmp_path / "local" / "writers-quant-huffman"),
              str(tmp_path / "sim" / "writers-quant-huffman"))
    with open(tmp_path / "sim" / "writers-quant-huffman" / "metrics.csv") as f:
        header, *rows = f.read().splitlines()
    fed = header.split(",").index("fed_eval_accuracy")
    assert all(r.split(",")[fed] for r in rows)  # the per-writer evaluation ran every round
    with open(tmp_path / "sim" / "writers-quant-huffman" / "summary.json") as f:
        assert json.load(f)["num_clients"] == 207
    for f in ("comparison.txt", "accuracy.png", "loss.png", "accuracy_vs_bits.png"):
        assert (tmp_path / "sim" / f).stat().st_size > 0, f  # as the local run writes them
    assert (tmp_path / "local" / "comparison.txt").read_text() == \
        (tmp_path / "sim" / "comparison.txt").read_text()


@pytest.mark.parametrize("flags, says", [
    (["--dataset", "cifar10", "--data-dir", "/nonexistent", "--model", "cnn-cifar"],
     "--dataset cifar10"),
    (["--codec", "tff-compression"], "--codec tff-compression"),
    (["--normalize", "0.5", "0.5"], "--normalize"),
    (["--client-stack", "2"], "--client-stack > 1"),
    (["--client-threads", "2"], "--client-threads > 1"),
    (["--progress", "tff"], "--progress tff"),
])
def test_what_the_app_cannot_do_is_refused_with_one_line(tmp_path, flags, says):
    r = _refsim(["--engine", "flower-sim", *SMALL, *flags, "--out", str(tmp_path / "o")])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "--engine flower-sim" in lines[0], r.stderr


@needs_ray
def test_a_failed_simulation_ends_with_one_line_as_the_in_process_run(tmp_path):
    """A NaN update under nan-policy raise stops both engines in round 1 with exit 1 and the
    same one line; the ServerApp's traceback is kept in error.txt, Flower's logs in the log."""
    args = ["--model", "2nn", "--codec", "float", "--clients", "10", "--fraction", "0.3",
            "--rounds", "2", "--train-limit", "1000", "--test-limit", "200", "--lr", "1e12",
            "--plot", "no", "--quiet"]
    local = _refsim([*args, "--out", str(tmp_path / "local")])
    sim = _refsim([*args, "--engine", "flower-sim", "--out", str(tmp_path / "sim")])
    assert local.returncode == sim.returncode == 1
    lines = sim.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in sim.stderr, sim.stderr[-2000:]
    what = local.stderr.strip().split("iid-float: ")[1]
    assert what.startswith("round 1: the update of client") and what in lines[0]
    run_dir = tmp_path / "sim" / "iid-float"
    assert "NonFiniteUpdateError" in (run_dir / "error.txt").read_text()
    assert (run_dir / "flower_sim.log").stat().st_size > 0
# K = 10, C = 0.3, 4 rounds of 60 examples a client: the features beyond plain FedAvg.
PARITY = [*SMALL, "--clients", "10", "--fraction", "0.3", "--rounds", "4",
          "--train-limit", "600"]
RUN = "iid-quant-huffman"


@needs_ray
def test_client_optimizer_state_and_trace_on_the_simulation_engine(tmp_path):
    """Adam with each client's state kept across rounds (held by the ServerApp, travelling with
    the messages), the trace and the checkpoint: the in-process run's files."""
    args = [*PARITY, "--client-opt", "adam", "--lr", "0.01", "--client-opt-state", "keep",
            "--trace", "--trace-every", "3"]
    local = _refsim([*args, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr
    sim = _refsim([*args, "--engine", "flower-sim", "--out", str(tmp_path / "sim")])
    assert sim.returncode == 0, sim.stderr[-3000:]
    _same_run(str(tmp_path / "local" / RUN), str(tmp_path / "sim" / RUN))
    assert_same_trace(tmp_path / "sim" / RUN / "trace", tmp_path / "local" / RUN / "trace")
    assert_same_checkpoint(tmp_path / "sim" / RUN / "checkpoint.npz",
                           tmp_path / "local" / RUN / "checkpoint.npz")
    state = load_checkpoint(tmp_path / "sim" / RUN / "checkpoint.npz")[2]
    assert any(k.endswith(".exp_avg") for k in state)  # the kept client states


INTERRUPT = """
import sys
from refsim.cli import build_parser
from refsim.cli.run_settings import grid, make_config, make_data, make_partition, settings
from refsim.fedavg import run_fedavg
from refsim.fedavg.named import MODELS
s = settings(build_parser().parse_args(["run", *sys.argv[2:]]))
(e, b), = grid(s)
data, _, _ = make_data(s)
def stop(row):
    if row.round == 2:
        raise SystemExit(0)
run_fedavg(make_config(s, s["codec"][0], e, b), MODELS[s["model"]](), data,
           make_partition(s["partition"][0], s, data.y_train, None), run_dir=sys.argv[1],
           on_round=stop)
"""


@needs_ray
def test_resume_on_the_simulation_engine_continues_an_interrupted_run_bit_for_bit(tmp_path):
    """An in-process run of 4 rounds stopped after round 2 (what refsim run leaves when
    killed then: checkpoint.npz) is resumed by --engine flower-sim --resume: the kept
    momentum states come from the checkpoint, and the result is the uninterrupted run's."""
    args = [*PARITY, "--client-opt", "momentum", "--client-opt-state", "keep",
            "--server-opt", "momentum", "--server-momentum", "0.9"]
    local = _refsim([*args, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr
    stopped = subprocess.run([sys.executable, "-c", INTERRUPT, str(tmp_path / "sim" / RUN),
                              *args], env=_env(), capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert load_checkpoint(tmp_path / "sim" / RUN / "checkpoint.npz")[0] == 2
    sim = _refsim([*args, "--engine", "flower-sim", "--resume", "--out", str(tmp_path / "sim")])
    assert sim.returncode == 0, sim.stderr[-3000:]
    _same_run(str(tmp_path / "local" / RUN), str(tmp_path / "sim" / RUN))
    summary = json.loads((tmp_path / "sim" / RUN / "summary.json").read_text())
    assert summary["resumed_after_round"] == 2
    assert [r["round"] for r in summary["timing"]["per_round"]] == [3, 4]
    # A checkpoint of another config is refused with one line (exit 2, as in process).
    other = _refsim([*args, "--lr", "0.05", "--engine", "flower-sim", "--resume",
                     "--out", str(tmp_path / "sim")])
    assert other.returncode == 2 and "written by a different run" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1, other.stderr


def test_ray_flags_need_the_simulation_engine(tmp_path):
    r = _refsim([*SMALL, "--ray-address", "127.0.0.1:1", "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "need --engine flower-sim" in r.stderr
    r = _refsim([*SMALL, "--engine", "flower-sim", "--client-cpus", "0",
                 "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "--client-cpus must be > 0" in r.stderr


def _pgrep(name: str) -> set[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _ray_processes(mark: str) -> set[int]:
    """The raylet/gcs_server processes whose command line names ``mark`` (this test's Ray
    temp dir: other users' Ray processes on the machine are left alone)."""
    mine = set()
    for pid in _pgrep("raylet") | _pgrep("gcs_server"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if mark.encode() in f.read():
                    mine.add(pid)
        except OSError:
            pass
    return mine


@needs_ray
def test_ray_address_runs_through_a_local_ray_head(tmp_path):
    port = free_port()
    mark = tempfile.mkdtemp(prefix="rs-ray-", dir="/tmp")  # AF_UNIX paths: <= 107 bytes
    env = dict(_env(), RAY_TMPDIR=mark, **LOOPBACK_ENV)  # a one-machine head: loopback only
    head = subprocess.Popen(
        [os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--include-dashboard=false", "--num-cpus=2",
         "--object-store-memory=100000000", "--disable-usage-stats",
         f"--temp-dir={env['RAY_TMPDIR']}"],
        env=env, stdout=open(tmp_path / "ray-head.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)  # a file: a full pipe would block the head
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _ray_processes(mark):
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-2000:]
            time.sleep(0.5)
        assert _ray_processes(mark), "the Ray head started no raylet within 90 s"
        time.sleep(2)
        started = set(_descendants(head.pid)) | _ray_processes(mark)
        args = [*SMALL, "--rounds", "2", "--clients", "10", "--fraction", "0.3"]
        sim = _refsim([*args, "--engine", "flower-sim", "--ray-address", f"127.0.0.1:{port}",
                       "--out", str(tmp_path / "sim")], timeout=150, env=env)
        started |= set(_descendants(head.pid))
        assert sim.returncode == 0, sim.stderr[-3000:]
        heard = listening_sockets(started | _ray_processes(mark))
        assert {_name(pid) for _, _, pid in heard} >= {"gcs_server", "raylet"}, heard
        assert all(is_loopback(a) for a, _, _ in heard), sorted(heard)
        local = _refsim([*args, "--out", str(tmp_path / "local")])
        assert local.returncode == 0, local.stderr
        _same_run(str(tmp_path / "local" / "iid-quant-huffman"),
                  str(tmp_path / "sim" / "iid-quant-huffman"))
    finally:
        started |= set(_descendants(head.pid)) | _ray_processes(mark)
        for pid in [head.pid, *sorted(started)]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in started | {head.pid}):
            time.sleep(0.2)
        for pid in started | {head.pid}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        head.wait(timeout=10)
        shutil.rmtree(mark, ignore_errors=True)
    assert not _ray_processes(mark), "a raylet or gcs_server of the head is still running"


def test_without_flower_or_ray_the_engine_is_one_line(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    from refsim.cli import run_flower_sim
    from refsim.cli._common import UsageError
    real = importlib.util.find_spec
    namespace = importlib.machinery.ModuleSpec("ray", None, is_package=True)  # e.g. /tmp/ray
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: namespace if name == "ray" else real(name, *a))
    s = {"engine": "flower-sim", "client_cpus": 1, "ray_address": None}
    with pytest.raises(UsageError, match=r"needs Flower's Simulation Engine \(ray not "
                                         r"installed\): pip install 'refsim\[flower\]'"):
        run_flower_sim.check_engine_settings(s)
