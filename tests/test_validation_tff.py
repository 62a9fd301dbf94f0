"""refsim against TensorFlow Federated 0.87, run for real (marker ``tff``).

TFF runs in a venv of its own (``$REFSIM_TFF_PYTHON``, see ``tests/tff_job.py``; without it
every test here is skipped with a reason saying how to build it). The ``tff`` fixture writes
refsim's runs (traces, weights, client values) to one job directory, runs all cases in one TFF
process (``tests/tff_side/replay.py``), and the tests compare. What each test shows, and why
each tolerance is what it is, is in ``docs/tff-semantics.md``:

* FedAvg replays: refsim's traces (sampled clients, batch orders, learning rates) replayed by
  ``build_weighted_fed_avg`` on Keras models started from refsim's weights: the CNN, the 2NN
  and the logistic model, unequal n_k, E = 2, B = 7 (divides no n_k), several rounds, a
  learning-rate decay (TFF's optimizer schedule). Weights after every round, float64 within
  1e-12 relative, float32 within 1e-5; TFF's training metrics and ``build_fed_eval``'s.
* The float32 learning rate (lr = 0.05 differs by ~1.5e-8; 0.125 and np.float64(0.05) do not).
* ``ServerSemantics.TFF``: TFF's sgdm (momentum), adam, yogi and adagrad over 5 rounds.
* ``RobustAggregator``: ``robust_aggregator`` over 5 rounds with an outlier, directly and in
  FedAvg; ``compression_aggregator`` and its quantizer statistically; TFF's encoded sizes.
* One client's local steps recorded in TFF, checked step by step against refsim (float64); the
  float32 CNN recording is written in ``refsim compare-steps``'s candidate format.

Relative differences are per tensor: max |a - b| / max |b|, the worst over tensors and rounds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tff_job
from tff_job import TFFJob, keras_list, max_rel, record

from refsim.cli import main
from refsim.compress import Codec, dequantize, quantize, tff_round_bits, tff_tensor_bits
from refsim.compress.tff_bits import TFF_TUTORIAL_CNN_SIZES
from refsim.data import load_mnist
from refsim.fedavg import (DType, FedAvgConfig, RobustAggregator, ServerOptConfig, Weighting,
                           from_images, run_fedavg)
from refsim.fedavg.robust import (TFF_CLIPPING, TFF_ZEROING, init_robust_state, robust_mean,
                                  tf_sum_f32)
from refsim.fedavg.client_opt import ClientOpt, ClientOptConfig
from refsim.fedavg.server_tff import tff_normalized_lr
from refsim.validation.step_inputs import load_client_round, load_steps
from refsim.validation.steps import check_client_steps
from refsim.nn import (cnn_cifar, cnn_mnist, from_keras_weights, logistic, mlp_2nn,
                       to_keras_weights)

pytestmark = pytest.mark.tff

SIZES = [23, 9, 41, 17, 30, 12]         # n_k: unequal, and B = 7 divides none of them
EVAL_SIZES = [7, 12, 3, 15, 9, 14]      # each client's own test examples (federated eval)
MODELS = {"cnn": cnn_mnist, "2nn": mlp_2nn, "logistic": logistic}
FIGURES: dict = {}
TIMEOUT_S = 1500


def _parts(sizes, seed=123):
    """Interleaved, unequal clients: sizes[k] examples each, drawn without replacement."""
    perm = np.random.default_rng(seed).permutation(sum(sizes))
    ends = np.cumsum(sizes)
    return [np.sort(perm[e - n:e]) for n, e in zip(sizes, ends)]


def _data(dtype, scale_client=None):
    data = from_images(load_mnist(), np.dtype(dtype), train_limit=sum(SIZES),
                       test_limit=sum(EVAL_SIZES))
    if scale_client is not None:  # an outlier: one client's images times 300
        k, factor = scale_client
        x = data.x_train.copy()
        x[_parts(SIZES)[k]] *= factor
        data = data._replace(x_train=x)
    return data


def _nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, 1, 28, 28) -> (N, 28, 28, 1)


def _fedavg_case(job, name, model_key, cfg, *, parts=None, data=None, eval_fed=False,
                 data_name=None, **tff_fields):
    """Run refsim with a trace; add the TFF case that replays it. Keeps (config, history)."""
    model = MODELS[model_key]()
    data = data if data is not None else _data(cfg.dtype.value)
    parts = parts if parts is not None else _parts(SIZES)
    eval_parts = _parts(EVAL_SIZES, seed=7) if eval_fed else None
    h = run_fedavg(cfg, model, data, parts, eval_partition=eval_parts,
                   run_dir=job.root / name, trace=True)
    data_name = data_name or f"data_{cfg.dtype.value}.npz"
    if not (job.root / data_name).exists():
        job.save(data_name, x=_nhwc(data.x_train), y=data.y_train)
    init = job.save(f"{name}_init.npz", **{f"w{i}": w for i, w in
                                           enumerate(to_keras_weights(model, h.initial_params))})
    case = {"name": name, "kind": "fedavg", "model": model_key, "dtype": cfg.dtype.value,
            "data": data_name, "trace": f"{name}/trace", "init": init, **tff_fields}
    if eval_fed:
        ev = job.save(f"eval_{cfg.dtype.value}.npz", x=_nhwc(data.x_test), y=data.y_test)
        ep = job.save("eval_parts.npz", **{f"client_{k}": p for k, p in enumerate(eval_parts)})
        case["eval"] = {"data": ev, "parts": ep}
    job.add(case)
    job.refsim[name] = (cfg, h, model, data, parts)


def _base(dtype="float64", **kw):
    args = dict(fraction=0.5, epochs=2, batch_size=7, lr=0.125, rounds=3, seed=11,
                dtype=DType(dtype))
    return FedAvgConfig(**{**args, **kw})


TFF_SERVER = {  # refsim's TFF semantics and the same optimizer in TFF
    "sgdm": (ServerOptConfig.tff_sgdm(lr=0.5, momentum=0.875),
             {"kind": "sgdm", "learning_rate": 0.5, "momentum": 0.875,
              "hparam_dtype": "float64"}),
    "adam": (ServerOptConfig.tff_adam(0.03125),
             {"kind": "adam", "learning_rate": 0.03125, "beta_1": 0.9, "beta_2": 0.999,
              "epsilon": 1e-7}),
    "yogi": (ServerOptConfig.tff_yogi(0.0625),
             {"kind": "yogi", "learning_rate": 0.0625, "beta_1": 0.9, "beta_2": 0.999,
              "epsilon": 1e-3, "initial_preconditioner_value": 1e-6}),
    "adagrad": (ServerOptConfig.tff_adagrad(0.125),
                {"kind": "adagrad", "learning_rate": 0.125, "initial_preconditioner_value": 0.1,
                 "epsilon": 1e-7}),
}


def _robust_values(model, rounds, clients, dtype, seed):
    """Client values for the aggregator processes: (rounds, clients) lists of per-tensor arrays
    with norms around the clipping bound, one value to zero (round 1, client 2: an entry of
    500 > 21) and one to clip hard (round 3, client 0: an entry of 15 and a large norm)."""
    rng = np.random.default_rng(seed)
    shapes = [s.shape for s in model.layout]
    out = []
    for r in range(rounds):
        row = []
        for k in range(clients):
            scale = 0.4 * (k + 1) / math.sqrt(model.num_params)
            tensors = [(rng.standard_normal(s) * scale).astype(dtype) for s in shapes]
            if (r, k) == (1, 2):
                tensors[0].flat[3] = 500.0
            if (r, k) == (3, 0):
                tensors[-2].flat[0] = 15.0
            row.append(tensors)
        out.append(row)
    return out


def _robust_process_case(job, name, model, dtype, weights, variant="robust", draws=None):
    values = _robust_values(model, len(weights), len(weights[0]), dtype, seed=len(name))
    arrays = {f"r{r}/c{k}/t{i}": t for r, row in enumerate(values) for k, ts in enumerate(row)
              for i, t in enumerate(ts)}
    job.add({"name": name, "kind": "robust_process", "dtype": np.dtype(dtype).name,
             "values": job.save(f"{name}_values.npz", **arrays), "weights": weights,
             "shapes": [list(s.shape) for s in model.layout], "variant": variant,
             "draws": draws})
    job.refsim[name] = (model, values, weights)


def _build(job: TFFJob) -> None:
    # FedAvg replays: float64 (1e-12) and float32 (1e-5), with federated evaluation.
    _fedavg_case(job, "fedavg_2nn_f64", "2nn", _base(), eval_fed=True)
    _fedavg_case(job, "fedavg_cnn_f64", "cnn", _base(rounds=2), eval_fed=True)
    _fedavg_case(job, "fedavg_logistic_f64_decay", "logistic",
                 _base(lr=0.25, lr_decay=0.5, rounds=4), eval_fed=True,
                 schedule={"lr": 0.25, "decay": 0.5})
    _fedavg_case(job, "fedavg_2nn_f32", "2nn", _base("float32"), eval_fed=True)
    _fedavg_case(job, "fedavg_logistic_f32", "logistic",
                 _base("float32", lr_decay=0.5, rounds=3), eval_fed=True)
    # The float32 learning rate: one refsim trace with lr = 0.05, replayed twice.
    _fedavg_case(job, "lr005_python", "logistic", _base(lr=0.05, rounds=2))
    job.add({**job.cases[-1], "name": "lr005_float64", "client_lr_dtype": "float64"})
    # TFF's server optimizers, 5 rounds, float64 (and momentum in float32).
    for key, (opt, spec) in TFF_SERVER.items():
        _fedavg_case(job, f"server_{key}", "logistic", _base(rounds=5, server=opt), server=spec)
    _fedavg_case(job, "server_sgdm_f32", "logistic",
                 _base("float32", rounds=5, server=ServerOptConfig.tff_sgdm(1.0, 0.9)),
                 server={"kind": "sgdm", "learning_rate": 1.0, "momentum": 0.9})
    # TFF's client build_adam (a fresh state every round): refsim's adam-tff, 3 rounds. Adam
    # divides by sqrt(v) + eps, so a gradient entry far below eps... far above it moves its
    # weight by ~lr whatever its size, and the last bits of a tiny, cancelling gradient sum
    # reach the weights: with TFF's eps 1e-7 the rounds part by 1.1e-12; eps 1e-4 damps it.
    _fedavg_case(job, "client_adam_tff", "logistic",
                 _base(lr=0.0625, client_opt=ClientOptConfig(ClientOpt.ADAM_TFF, eps=1e-4)),
                 client={"kind": "adam", "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-4})
    # The robust aggregator inside FedAvg: every client each round, client 3's images x300.
    _fedavg_case(job, "robust_fedavg", "logistic",
                 _base(fraction=1.0, rounds=5, aggregator=RobustAggregator()),
                 parts=_parts(SIZES)[:4], data=_data("float64", scale_client=(3, 300.0)),
                 data_name="data_robust.npz", aggregator="robust")
    # The aggregator processes on their own: 10 tensors (cnn_cifar), 5 clients, 5 rounds.
    w5 = [[31, 7, 19, 44, 12], [5, 28, 13, 9, 40], [17, 17, 3, 25, 8], [22, 6, 35, 14, 11],
          [9, 30, 21, 4, 16]]
    _robust_process_case(job, "robust_f64", cnn_cifar(), np.float64, w5)
    _robust_process_case(job, "robust_f32", mlp_2nn(), np.float32, [w[:4] for w in w5])
    _robust_process_case(job, "compression_draws", cnn_cifar(), np.float32, [[5, 11, 7]],
                         variant="compression", draws=100)
    # TFF's encoded sizes and its quantizer.
    items = [{"shape": [n], "bits": 8} for n in (*TFF_TUTORIAL_CNN_SIZES, 20_000, 20_001,
                                                  20_002, 20_003, 20_004, 20_005, 20_006)]
    items += [{"shape": [20_003], "bits": b} for b in (1, 2, 4, 6, 7, 12, 16)]
    items += [{"shape": [5, 5, 32, 64], "bits": 8}, {"shape": [3136, 512], "bits": 8}]
    job.add({"name": "encoded_sizes", "kind": "encoded_sizes", "items": items,
             "threshold": 20_000})
    x = (np.random.default_rng(5).standard_normal(30_000) * np.linspace(0.1, 2, 30_000))
    job.add({"name": "quantizer_draws", "kind": "quantizer_draws", "draws": 200,
             "x": job.save("quantizer_x.npz", x=x.astype(np.float32))})
    job.refsim["quantizer_draws"] = x.astype(np.float32)
    # One client's local steps: the float64 CNN (checked against refsim step by step), and
    # the float32 CNN in compare-steps' candidate format (with TFF's own round beside it).
    _steps_case(job, "steps_cnn_f64", "fedavg_cnn_f64", round_=2, check_with_tff=False)
    _fedavg_case(job, "cnn_f32_run", "cnn", _base("float32", rounds=1, epochs=1))
    job.cases.pop()  # the run only provides the trace the float32 recording starts from
    _steps_case(job, "steps_cnn_f32", "cnn_f32_run", round_=1, check_with_tff=True,
                largest=True)
    # TensorFlow's float32 arithmetic that the TFF semantics reproduce.
    job.add({"name": "tf_float32", "kind": "tf_float32", **_tf_float32_inputs()})


def _steps_case(job, name, run, round_, check_with_tff, largest=False):
    """Record one client of ``round_`` of refsim's run ``run``: the first sampled client, or
    the sampled client with the most examples (``largest``, the most local steps)."""
    cfg, h, model, data, parts = job.refsim[run]
    tdir = job.root / run / "trace"
    received = (np.load(tdir / "init.npz")["weights"] if round_ == 1 else
                np.load(tdir / f"round_{round_ - 1:06d}.npz")["weights"])
    sampled = h.rounds[round_ - 1].clients
    client = max(sampled, key=lambda k: len(parts[k])) if largest else sampled[0]
    weights = job.save(f"{name}_in.npz", **{f"w{i}": w for i, w in
                                            enumerate(to_keras_weights(model, received))})
    job.add({"name": name, "kind": "record_steps", "model": "cnn", "dtype": cfg.dtype.value,
             "data": f"data_{cfg.dtype.value}.npz", "trace": f"{run}/trace", "round": round_,
             "client": client, "weights": weights, "check_with_tff": check_with_tff})
    job.refsim[name] = (run, round_, client, received)


def _quantile_records(norm, m, below):
    """m records, ``below`` of them at the initial estimate (counted as below) and the rest
    above it: the inputs of one quantile update."""
    est = np.float32(norm.initial)
    return [float(est)] * below + [float(est * np.float32(2))] * (m - below)


def _tf_float32_inputs():
    """For the ``tf_float32`` case: quantile updates for m = 1..20 clients (each count below),
    short float32 sums, and the steps t = 1..100 of TFF's bias-corrected learning rate."""
    quantile = [{"stage": stage, "m": m, "below": b}
                for stage in ("zeroing", "clipping") for m in range(1, 21) for b in range(m + 1)]
    rng = np.random.default_rng(3)
    sums = [(rng.uniform(0, 1, n) * 10.0 ** rng.integers(-3, 3, n)).astype(np.float32).tolist()
            for n in rng.integers(2, 12, 400)]
    return {"quantile": quantile, "sums": sums,
            "adam": {"lr": 0.03125, "beta_1": 0.9, "beta_2": 0.999, "steps": 100}}


@pytest.fixture(scope="module")
def tff(tmp_path_factory):
    """All TFF cases, run once (module scope); skipped without the TFF venv."""
    python = tff_job.tff_python()
    if python is None:
        pytest.skip(tff_job.SKIP_REASON)
    job = TFFJob(tmp_path_factory.mktemp("tff_job"))
    _build(job)
    job.run(python, TIMEOUT_S)
    record(FIGURES, "tff_process_wall_s", round(job.wall_s, 1))
    return job


# -- helpers for the comparisons ---------------------------------------------------------------

F32_ULP = 2.0 ** -23  # relative spacing of float32 numbers near 1 (at most)
FEDAVG = ["fedavg_2nn_f64", "fedavg_cnn_f64", "fedavg_logistic_f64_decay", "fedavg_2nn_f32",
          "fedavg_logistic_f32", "lr005_float64", "server_sgdm", "server_adam", "server_yogi",
          "server_adagrad", "server_sgdm_f32", "robust_fedavg", "client_adam_tff"]
WITH_EVAL = ["fedavg_2nn_f64", "fedavg_cnn_f64", "fedavg_logistic_f64_decay", "fedavg_2nn_f32",
             "fedavg_logistic_f32"]


def _tol(dtype) -> float:
    """The issue's tolerances: float64 1e-12 relative, float32 1e-5."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 1e-5


def _tff_weights(job, name, model, t):
    """TFF's global weights after round t, in refsim's flat layout."""
    return from_keras_weights(model, keras_list(job.arrays(name), f"round_{t}/"))


def _round_rel(job, name, model, t, reference) -> float:
    return max_rel(model.views(_tff_weights(job, name, model, t)).values(),
                   model.views(reference).values())


def _traced(job, run, t):
    return np.load(job.root / run / "trace" / f"round_{t:06d}.npz")["weights"]


def _float32_sum_bound(terms: int) -> float:
    """Relative error bound of TFF's float32 metric sums: each of ``terms`` values rounded to
    float32, multiplied by its weight and added (3 roundings each), and the final division."""
    return (3 * terms + 2) * 2.0 ** -24


def _max_over_rounds(job, name, fn) -> float:
    return max(fn(t) for t in range(1, len(job.info(name)["rounds"]) + 1))


# -- processes ---------------------------------------------------------------------------------

def test_no_tff_process_is_left_behind(tff):
    """The TFF process group (TFF's worker_binary included) was ended and is gone."""
    assert tff.leftover == [], f"processes of the TFF group still alive: {tff.leftover}"
    record(FIGURES, "leftover_processes", tff.leftover)


# -- FedAvg replays ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", FEDAVG)
def test_fedavg_weights_equal_tff_every_round(tff, name):
    """TFF's global weights after every round equal refsim's traced ones (float64 1e-12,
    float32 1e-5 relative), for unequal n_k, E = 2, B = 7, lr decay, TFF server optimizers
    (ServerSemantics.TFF) and TFF's robust aggregator (RobustAggregator)."""
    cfg, h, model, _, _ = tff.refsim[name if name != "lr005_float64" else "lr005_python"]
    run = name if name != "lr005_float64" else "lr005_python"
    worst = _max_over_rounds(tff, name, lambda t: _round_rel(tff, name, model, t,
                                                             _traced(tff, run, t)))
    record(FIGURES, f"weights_max_rel/{name}", worst)
    assert worst <= _tol(cfg.dtype.np), f"{name}: max relative difference {worst:.3g}"


@pytest.mark.parametrize("name", FEDAVG)
def test_training_metrics_equal_tff_every_round(tff, name):
    """TFF's train metrics of every round: num_examples = E * refsim's examples (TFF counts
    the examples processed), num_batches = refsim's batches, sparse_categorical_accuracy =
    float32(refsim's train_accuracy) to one float32 rounding, loss = train_loss within the
    float32 summation bound (TFF's Keras metrics are float32 even for a float64 model)."""
    cfg, h, _, _, _ = tff.refsim[name if name != "lr005_float64" else "lr005_python"]
    worst_loss = worst_acc = 0.0
    for row, ref in zip(tff.info(name)["rounds"], h.rounds, strict=True):
        train = row["train"]
        assert train["num_examples"] == cfg.epochs * ref.examples, f"{name} round {ref.round}"
        assert train["num_batches"] == ref.batches, f"{name} round {ref.round}"
        acc = abs(train["sparse_categorical_accuracy"] - ref.train_accuracy) / ref.train_accuracy
        loss = abs(train["loss"] - ref.train_loss) / ref.train_loss
        worst_acc, worst_loss = max(worst_acc, acc), max(worst_loss, loss)
        assert acc <= F32_ULP, f"{name} round {ref.round}: accuracy {acc:.3g}"
        assert loss <= _float32_sum_bound(ref.batches), f"{name} round {ref.round}: {loss:.3g}"
    record(FIGURES, f"train_metrics_max_rel/{name}", {"loss": worst_loss,
                                                       "accuracy": worst_acc})


@pytest.mark.parametrize("name", WITH_EVAL)
def test_federated_evaluation_equals_build_fed_eval(tff, name):
    """``build_fed_eval`` on each client's own test examples, with the weights after every
    round, equals refsim's federated evaluation (fed_eval_loss / fed_eval_accuracy): the
    example-weighted mean over clients (TFF sums the float32 metric totals over clients)."""
    cfg, h, _, _, _ = tff.refsim[name]
    worst = 0.0
    for row, ref in zip(tff.info(name)["rounds"], h.rounds, strict=True):
        ev = row["eval"]
        assert ev["num_examples"] == sum(EVAL_SIZES)
        assert ev["num_batches"] == len(EVAL_SIZES)  # one batch of <= 1000 per client
        acc = abs(ev["sparse_categorical_accuracy"] - ref.fed_eval_accuracy)
        loss = abs(ev["loss"] - ref.fed_eval_loss) / ref.fed_eval_loss
        worst = max(worst, loss)
        assert acc <= F32_ULP * ref.fed_eval_accuracy, f"{name} round {ref.round}"
        assert loss <= _float32_sum_bound(len(EVAL_SIZES)), f"{name} round {ref.round}: {loss}"
    record(FIGURES, f"fed_eval_loss_max_rel/{name}", worst)


def test_uniform_weighting_does_not_match_tff(tff):
    """Discriminating: TFF weights clients by examples; refsim's Weighting.UNIFORM is > 1e-6 off."""
    cfg, _, model, data, parts = tff.refsim["fedavg_2nn_f64"]
    cfg_u = FedAvgConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                            "weighting": Weighting.UNIFORM})
    h = run_fedavg(cfg_u, model, data, parts)
    assert _round_rel(tff, "fedavg_2nn_f64", model, cfg.rounds, h.params) > 1e-6


def test_tff_keeps_learning_rates_as_float32(tff):
    """TFF stores a Python-float learning rate as a float32 constant: with lr = 0.05 its
    float64 run is ~1.5e-8 away from refsim's (0.05 is not a float32 number); refsim with
    lr = float32(0.05) = 0.0500000007... reproduces TFF's run to 1e-12, and TFF given
    np.float64(0.05) keeps float64 and reproduces refsim's lr = 0.05."""
    cfg, h, model, data, parts = tff.refsim["lr005_python"]
    off = _max_over_rounds(tff, "lr005_python", lambda t: _round_rel(
        tff, "lr005_python", model, t, _traced(tff, "lr005_python", t)))
    exact = _max_over_rounds(tff, "lr005_float64", lambda t: _round_rel(
        tff, "lr005_float64", model, t, _traced(tff, "lr005_python", t)))
    lr32 = float(np.float32(0.05))
    cfg32 = FedAvgConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                            "lr": lr32})
    run_fedavg(cfg32, model, data, parts, run_dir=tff.root / "lr005_as_float32", trace=True)
    as32 = _max_over_rounds(tff, "lr005_python", lambda t: _round_rel(
        tff, "lr005_python", model, t, _traced(tff, "lr005_as_float32", t)))
    record(FIGURES, "float32_lr", {"lr=0.05 python float": off, "np.float64(0.05)": exact,
                                   "refsim lr=float32(0.05)": as32})
    assert 1e-9 < off < 1e-7, off
    assert exact <= 1e-12 and as32 <= 1e-12, (exact, as32)
    assert lr32 - 0.05 == pytest.approx(7.45e-10, rel=1e-2)


# -- server optimizers -------------------------------------------------------------------------

FLOWER_COUNTERPART = {  # the same hyperparameters under Flower's formulas
    "sgdm": ServerOptConfig(TFF_SERVER["sgdm"][0].kind, 0.5, 0.875),
    "adam": ServerOptConfig.fedadam(0.03125, 0.9, 0.999, 1e-7, bias_correction=True),
    "yogi": ServerOptConfig.fedyogi(0.0625, 0.9, 0.999, 1e-3),
    "adagrad": ServerOptConfig.fedadagrad(0.125, 1e-7),
}


@pytest.mark.parametrize("key", sorted(TFF_SERVER))
def test_tff_server_optimizers_need_tff_semantics(tff, key):
    """ServerSemantics.TFF equals TFF over 5 rounds (test_fedavg_weights_equal_tff_every_round);
    Flower's formulas with the same hyperparameters do not, except momentum, where TFF and
    Flower agree (v = mu v + g, w - lr v)."""
    name = f"server_{key}"
    cfg, h, model, data, parts = tff.refsim[name]
    cfg_f = FedAvgConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                            "server": FLOWER_COUNTERPART[key]})
    flower = run_fedavg(cfg_f, model, data, parts)
    rel = _round_rel(tff, name, model, cfg.rounds, flower.params)
    record(FIGURES, f"flower_formulas_vs_tff/{key}", rel)
    if key == "sgdm":
        assert rel <= 1e-12, rel
    else:
        assert rel > 1e-4, f"{key}: Flower's formulas are only {rel:.2g} from TFF's"


# -- the robust aggregator ---------------------------------------------------------------------

def _refsim_robust_rounds(model, values, weights, agg=None):
    """refsim's robust_mean over the rounds of a robust_process case: (means, estimates, facts)."""
    agg = agg or RobustAggregator()
    state, out = init_robust_state(agg), []
    for r, row in enumerate(values):
        flat = [np.concatenate([t.ravel() for t in ts]) for ts in row]
        mean, state, facts = robust_mean(flat, weights[r], state, agg, model, 0, r + 1,
                                         list(range(len(row))))
        out.append((mean, dict(state), facts))
    return out


@pytest.mark.parametrize("name", ["robust_f64", "robust_f32"])
def test_robust_aggregator_equals_tff_over_5_rounds(tff, name):
    """``robust_mean`` equals ``tff.learning.robust_aggregator(zeroing=True, clipping=True,
    weighted=True)`` round by round: the means (float64 1e-12; float32 1e-5, TFF sums the
    float32 tensors' squares in float32), the bounds used and both estimates (bit for bit in
    float64), and which clients were zeroed and clipped. Round 2's zeroed client has an entry
    of 500: clipped first it would have an inf-norm below the zeroing bound and be averaged
    in, so the agreement also pins the order (zero, then clip)."""
    model, values, weights = tff.refsim[name]
    ours = _refsim_robust_rounds(model, values, weights)
    theirs, arrays = tff.info(name)["rounds"], tff.arrays(name)
    dtype = values[0][0][0].dtype
    worst, worst_norm = 0.0, 0.0
    for r, ((mean, state, facts), t) in enumerate(zip(ours, theirs, strict=True)):
        tensors = [arrays[f"r{r}/t{i}"] for i in range(len(model.layout))]
        worst = max(worst, max_rel(model.views(mean).values(), tensors))
        assert len(facts["zeroed"]) == t["zeroed_count"], f"round {r}"
        assert len(facts["clipped"]) == t["clipped_count"], f"round {r}"
        for ours_v, theirs_v in ((facts["zeroing_norm"], t["zeroing_norm"]),
                                 (facts["clipping_norm"], t["clipping_norm"]),
                                 (float(state["robust_zeroing_estimate"]), t["zeroing_estimate"]),
                                 (float(state["robust_clipping_estimate"]),
                                  t["clipping_estimate"])):
            worst_norm = max(worst_norm, abs(ours_v - theirs_v) / theirs_v)
    record(FIGURES, f"robust_max_rel/{name}", {"mean": worst, "norms": worst_norm})
    assert worst <= _tol(dtype), worst
    assert worst_norm <= (0.0 if dtype == np.float64 else 8 * F32_ULP), worst_norm
    assert sum(t["zeroed_count"] for t in theirs) >= 1 and all(t["clipped_count"] for t in theirs)
    # The order: clipped first, round 1's outlier would not have been zeroed.
    outlier = values[1][2]
    norm = math.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in outlier))
    assert max(float(np.abs(a).max()) for a in outlier) * ours[1][2]["clipping_norm"] / norm \
        < ours[1][2]["zeroing_norm"]


def test_robust_fedavg_bounds_equal_tff(tff):
    """In FedAvg (client 3's images x300): refsim's per-round zeroing and clipping bounds and
    the zeroed / clipped counts equal TFF's measurements; the outlier is zeroed in rounds 1-2
    and clipped once the zeroing bound has grown past it."""
    _, h, _, _, _ = tff.refsim["robust_fedavg"]
    for row, ref in zip(tff.info("robust_fedavg")["rounds"], h.rounds, strict=True):
        agg = row["aggregator"]
        assert ref.zeroing_norm == agg["zeroing_norm"]
        assert ref.clipping_norm == agg["zeroing"]["clipping_norm"]
        assert len(ref.zeroed_clients) == agg["zeroed_count"]
        assert len(ref.clipped_clients) == agg["zeroing"]["clipped_count"]
    assert h.rounds[0].zeroed_clients == (3,) and 3 in h.rounds[-1].clipped_clients


# -- compression: the quantizer and the encoded sizes ------------------------------------------

def _rounding_moments(values, weight_sum=1.0):
    """Per element, the variance and fourth moment of sum_k Q(v_k) / W around sum_k v_k / W,
    for independent 8-bit stochastic rounding of each v_k between its own min and max
    (the error of client k is a_k (B - f), a_k = step_k / W, B ~ Bernoulli(f))."""
    var = fourth = pair = 0.0
    for v in values:  # (n,) each
        v = np.asarray(v, np.float64)
        step = (v.max() - v.min()) / 255
        f = (v - v.min()) / step
        f -= np.floor(f)
        s = f * (1 - f)  # E[(B - f)^2]
        a2 = (step / weight_sum) ** 2
        fourth = fourth + a2 ** 2 * s * ((1 - f) ** 3 + f ** 3) + 6 * pair * a2 * s
        pair = pair + a2 * s
        var = var + a2 * s
    return var, fourth


def _z_scores(total, total_sq, draws, mu, var, fourth):
    """z of the summed bias sum_i (mean_i - mu_i) and of the mean squared error
    S = sum_i mean_r (d_ir - mu_i)^2 against its expectation sum_i var_i."""
    bias = float(np.sum(total / draws - mu))
    sq = float(np.sum((total_sq - 2 * mu * total + draws * mu ** 2) / draws))
    z_bias = bias / math.sqrt(float(np.sum(var)) / draws)
    z_var = (sq - float(np.sum(var))) / math.sqrt(float(np.sum(fourth - var ** 2)) / draws)
    return z_bias, z_var, sq


def test_quantizer_matches_tffs_statistically(tff):
    """TFF's ``uniform_quantization(8)`` (compression_aggregator's stage) and refsim's
    ``quantize(x, 8, stochastic=True)`` on the same 30,000 float32 values: the same grid
    (min, max, 256 levels, each value rounded to one of its two neighbouring levels), both
    unbiased, both with the variance step^2 f (1 - f) per element, within 5 standard errors
    (TFF's random stream cannot be replayed, so the draws are compared in distribution)."""
    x = tff.refsim["quantizer_draws"]
    arrays, draws = tff.arrays("quantizer_draws"), tff.info("quantizer_draws")["draws"]
    lo, hi = float(x.min()), float(x.max())
    assert arrays["min_max"].tolist() == [lo, hi]
    t = (x.astype(np.float64) - lo) / (hi - lo) * 255
    q_tff = (arrays["decoded_0"] - lo) / (hi - lo) * 255
    q_ref = quantize(x, 8, stochastic=True, seed=0)
    assert (q_ref.min, q_ref.max) == (lo, hi)
    for q in (q_tff, q_ref.levels.astype(np.float64)):  # TFF decodes in float32: ~1e-5 off
        level = np.round(q)
        assert np.abs(q - level).max() < 1e-3 and 0 <= level.min() and level.max() <= 255
        assert np.all((level == np.floor(t)) | (level == np.ceil(t)))
    total, total_sq = np.zeros(x.size), np.zeros(x.size)
    for seed in range(draws):
        d = dequantize(quantize(x, 8, stochastic=True, seed=seed)).astype(np.float64)
        total, total_sq = total + d, total_sq + d * d
    var, fourth = _rounding_moments([x])
    mu = x.astype(np.float64)
    z_tff = _z_scores(arrays["sum"], arrays["sumsq"], draws, mu, var, fourth)
    z_ref = _z_scores(total, total_sq, draws, mu, var, fourth)
    z_diff = (z_tff[2] - z_ref[2]) / math.sqrt(2 * float(np.sum(fourth - var ** 2)) / draws)
    record(FIGURES, "quantizer_z", {"tff": z_tff[:2], "refsim": z_ref[:2], "diff": z_diff,
                                    "expected_mse": float(np.sum(var)), "tff_mse": z_tff[2],
                                    "refsim_mse": z_ref[2]})
    assert max(abs(z) for z in (*z_tff[:2], *z_ref[:2], z_diff)) < 5, (z_tff, z_ref, z_diff)


def test_compression_aggregator_matches_tff_statistically(tff):
    """``RobustAggregator.tff_compression()`` against ``tff.learning.compression_aggregator()``
    on the same three clients (cnn_cifar's tensors, float32), 100 draws each: tensors of at
    most 20,000 elements pass unquantized and equal refsim's robust mean; fc1.weight (48,000)
    is quantized after weighting: both means unbiased and with the variance of independent
    8-bit stochastic rounding of each w_k z_k, within 5 standard errors."""
    model, values, weights = tff.refsim["compression_draws"]
    arrays, draws = tff.arrays("compression_draws"), tff.info("compression_draws")["draws"]
    flat = [np.concatenate([t.ravel() for t in ts]) for ts in values[0]]
    state = init_robust_state(RobustAggregator())
    exact, _, _ = robust_mean(flat, weights[0], state, RobustAggregator(), model, 0, 1, [0, 1, 2])
    clipped = [robust_mean([x], [1.0], state, RobustAggregator(), model, 0, 1, [k])[0]
               for k, x in enumerate(flat)]  # z_k: one client's zeroed, clipped update
    names = [s.name for s in model.layout]
    big = names.index("fc1.weight")
    total, total_sq = np.zeros(model.num_params), np.zeros(model.num_params)
    comp = RobustAggregator.tff_compression()
    for seed in range(draws):
        mean, _, facts = robust_mean(flat, weights[0], state, comp, model, seed, 1, [0, 1, 2])
        total, total_sq = total + mean, total_sq + mean.astype(np.float64) ** 2
    ours = model.views(total / draws)
    worst_small = max(max_rel([arrays[f"sum/t{i}"] / draws, ours[n]], [model.views(exact)[n]] * 2)
                      for i, n in enumerate(names) if i != big)
    assert worst_small <= 1e-6, worst_small
    w = [np.float32(x) for x in weights[0]]
    v = [model.views(z)[names[big]].ravel() * wk for z, wk in zip(clipped, w)]  # w_k z_k
    var, fourth = _rounding_moments(v, float(sum(w)))
    mu = model.views(exact)[names[big]].ravel().astype(np.float64)
    z_tff = _z_scores(arrays[f"sum/t{big}"].ravel(), arrays[f"sumsq/t{big}"].ravel(), draws,
                      mu, var, fourth)
    z_ref = _z_scores(model.views(total)[names[big]].ravel(),
                      model.views(total_sq)[names[big]].ravel(), draws, mu, var, fourth)
    record(FIGURES, "compression_z", {"tff": z_tff[:2], "refsim": z_ref[:2],
                                      "unquantized_max_rel": worst_small})
    assert max(abs(z) for z in (*z_tff[:2], *z_ref[:2])) < 5, (z_tff, z_ref)
    assert facts["uplink_bits"] > 0 and len(facts["clipped"]) >= 1


def test_tff_encoded_sizes_equal_refsim_accounting(tff):
    """The tensors TFF's compression_aggregator encoders produce (bit-packed int32 words plus
    the float32 min and max above 20,000 elements; the float32 tensor itself otherwise),
    measured in TFF, equal ``tff_tensor_bits`` for every size and bit width tried; the
    tutorial CNN's round (10 clients) is 153,575,360 bits, 532,278,400 uncompressed; and a
    ``--codec tff-compression`` run reports that count as ``tff_uplink_bits``."""
    items = tff.info("encoded_sizes")["items"]
    for it in items:
        n = int(np.prod(it["shape"]))
        assert it["encoded_bits"] == tff_tensor_bits(n, it["bits"]), it
    cnn = {it["shape"][0]: it["encoded_bits"] for it in items[:len(TFF_TUTORIAL_CNN_SIZES)]}
    per_client = sum(cnn[n] for n in TFF_TUTORIAL_CNN_SIZES)
    assert 10 * per_client == tff_round_bits(TFF_TUTORIAL_CNN_SIZES, 10) == 153_575_360
    assert tff_round_bits(TFF_TUTORIAL_CNN_SIZES, 10, None) == 532_278_400
    record(FIGURES, "tff_encoded_bits_cnn", {str(n): cnn[n] for n in TFF_TUTORIAL_CNN_SIZES})
    data = _data("float32")
    cfg = _base("float32", rounds=1, epochs=1, batch_size=20, fraction=1 / 3,
                aggregator=RobustAggregator.tff_compression())
    h = run_fedavg(cfg, cnn_mnist(), data, _parts(SIZES))
    row = h.rounds[0]
    assert row.tff_uplink_bits == len(row.clients) * per_client
    assert row.uplink_bits == sum(8 * len(Codec.encode(cfg.aggregator.codec, [
        np.zeros(s.shape, np.float32) for s in cnn_mnist().layout])) for _ in row.clients)


# -- one client's local steps ------------------------------------------------------------------

def _client_batches(job, run, round_, client, data):
    z = np.load(job.root / run / "trace" / f"round_{round_:06d}.npz")
    cfg = job.refsim[run][0]
    for idx in z[f"order_{client}"]:
        for start in range(0, len(idx), cfg.batch_size):
            rows = idx[start:start + cfg.batch_size]
            yield data.x_train[rows], data.y_train[rows]


def candidate_steps(model, arrays) -> dict[str, np.ndarray]:
    """replay.py's record_steps output (Keras weights step_<j>/w<i>) as ``refsim
    compare-steps``'s candidate: step_<j>/<tensor> in refsim's names and layouts."""
    steps = sorted({int(k.split("/")[0][5:]) for k in arrays if k.startswith("step_")})
    out = {}
    for j in steps:
        flat = from_keras_weights(model, keras_list(arrays, f"step_{j}/"))
        out.update({f"step_{j}/{n}": v.copy() for n, v in model.views(flat).items()})
    return out


def test_recorded_tff_steps_equal_refsim_steps_float64(tff):
    """The recording of one client's local steps in TFF (float64 CNN, round 2): step 0 is the
    weights the client received, and each step j -> j + 1 equals refsim's SGD step from the
    recorded weights on the same batch (1e-12 relative), so the recording is known correct."""
    run, round_, client, received = tff.refsim["steps_cnn_f64"]
    cfg, _, model, data, _ = tff.refsim[run]
    cand = candidate_steps(model, tff.arrays("steps_cnn_f64"))
    steps = [np.concatenate([cand[f"step_{j}/{s.name}"].ravel() for s in model.layout])
             for j in range(tff.info("steps_cnn_f64")["steps"] + 1)]
    assert np.array_equal(steps[0], received)
    batches = list(_client_batches(tff, run, round_, client, data))
    assert len(batches) == len(steps) - 1 == cfg.epochs * math.ceil(SIZES[client] / 7)
    worst = 0.0
    lr = cfg.client_lr(round_)
    for j, (xb, yb) in enumerate(batches):
        _, grad = model.loss_and_grad(steps[j], xb, yb)
        ours = steps[j] - lr * grad
        worst = max(worst, max_rel(model.views(ours).values(), model.views(steps[j + 1]).values()))
    record(FIGURES, "recorded_steps_max_rel/cnn_f64", worst)
    assert worst <= 1e-12, worst


def test_float32_cnn_recording_is_tffs_client_update(tff):
    """The float32 CNN recording (round 1, the sampled client with the most examples) starts from refsim's
    weights and ends where TFF's own one-client round of ``build_weighted_fed_avg`` ends, so it
    is TFF's local training step by step. It is written as ``refsim compare-steps``'s candidate
    (``steps_cnn_f32_candidate.npz`` beside the trace ``cnn_f32_run/trace``)."""
    run, round_, client, received = tff.refsim["steps_cnn_f32"]
    model = cnn_mnist()
    arrays = tff.arrays("steps_cnn_f32")
    cand = candidate_steps(model, arrays)
    last = tff.info("steps_cnn_f32")["steps"]
    start = np.concatenate([cand[f"step_0/{s.name}"].ravel() for s in model.layout])
    assert start.dtype == np.float32 and np.array_equal(start, received)
    end = [cand[f"step_{last}/{s.name}"] for s in model.layout]
    own = model.views(from_keras_weights(model, keras_list(arrays, "tff_round/")))
    rel = max_rel(end, own.values())
    record(FIGURES, "float32_recording_vs_tff_round", rel)
    assert rel <= 1e-5, rel  # eager steps vs TFF's graph: float32 rounding (6.3e-7 measured)
    np.savez(tff.root / "steps_cnn_f32_candidate.npz", **cand)
    # TFF's float32 steps, each checked from TFF's own weights (docs/validation.md, section 6):
    # every step agrees with refsim's within the step tolerance, or is a tie flip.
    trace = tff.root / run / "trace"
    client_round = load_client_round(trace, round_, client)
    steps = load_steps(tff.root / "steps_cnn_f32_candidate.npz", model)
    mnist = load_mnist()
    report = check_client_steps(steps, client_round, mnist.x_train, mnist.y_train)
    assert report.agree, report.first_divergence.note
    assert len(report.checks) == last
    record(FIGURES, "compare_steps_f32_cnn", {
        "steps": len(report.checks), "tie_flips": report.count("tie flip"),
        "largest_err_over_bound": max(t.ratio for c in report.checks for t in
                                      (c.flipped or c.tensors))})
    assert main(["compare-steps", str(tff.root / "steps_cnn_f32_candidate.npz"), str(trace),
                 "--round", str(round_), "--client", str(client)]) == 0


# -- TensorFlow's float32 arithmetic -----------------------------------------------------------

def test_tf_float32_arithmetic_that_refsim_reproduces(tff):
    """Bit for bit against TensorFlow 2.14 inside TFF: Adam's / Yogi's float32 normalized
    learning rate for t = 1..100; ``tf.reduce_sum`` of 2..11 float32 values (the global-norm
    sum); and one round of TFF's zeroing and clipping quantile processes for m <= 14 clients.
    From m = 15 on TensorFlow's float32 exp is one ulp off the correctly rounded value for a
    few (m, below) pairs; those are recorded, and must stay within one ulp."""
    inputs, out = _tf_float32_inputs(), tff.info("tf_float32")
    a = inputs["adam"]
    ours = [float(tff_normalized_lr(a["lr"], a["beta_1"], a["beta_2"], t))
            for t in range(1, a["steps"] + 1)]
    assert ours == out["adam_lr"]
    assert [float(tf_sum_f32(v)) for v in inputs["sums"]] == out["sums"]
    off = []
    for q, theirs in zip(inputs["quantile"], out["estimates"], strict=True):
        norm = TFF_ZEROING if q["stage"] == "zeroing" else TFF_CLIPPING
        est = np.float32(norm.initial)
        ours_q = float(norm.update(est, [np.float32(r) for r in
                                         _quantile_records(norm, q["m"], q["below"])]))
        if ours_q != theirs:
            off.append((q["stage"], q["m"], q["below"]))
            assert abs(ours_q - theirs) <= abs(theirs) * F32_ULP, (q, ours_q, theirs)
    record(FIGURES, "tf_exp_one_ulp_off", off)
    assert all(m >= 15 for _, m, _ in off), off


def test_torchs_client_adam_is_not_tffs(tff):
    """refsim's ``adam`` (torch.optim.Adam) with TFF's hyperparameters parts from TFF's client
    build_adam (eps before the bias correction), by far more than the 1e-12 adam-tff meets."""
    cfg, h, model, data, parts = tff.refsim["client_adam_tff"]
    torch_like = dataclasses.replace(cfg, client_opt=ClientOptConfig(ClientOpt.ADAM, eps=1e-4))
    ht = run_fedavg(torch_like, model, data, parts)
    rel = _round_rel(tff, "client_adam_tff", model, cfg.rounds, ht.params)
    record(FIGURES, "client_adam_torch_vs_tff", rel)
    assert rel > 1e-6
