"""Cross-check of refsim's server side against Flower (``flwr``), a real peer.

``refsim.fedavg.server.weighted_average`` and ``server_update`` are compared with Flower's
own code: the aggregation functions ``flwr.server.strategy.aggregate.aggregate`` and
``aggregate_inplace``, and the strategies FedAvg, FedAvgM, FedAdam, FedYogi and FedAdagrad
of both Flower APIs: the legacy ``flwr.server.strategy`` (``aggregate_fit`` on ``FitRes``)
and the Message API ``flwr.serverapp.strategy`` (``configure_train`` / ``aggregate_train``
on ``ArrayRecord``). The strategies are driven directly with constructed client results:
no servers, no Ray, no network. Every comparison uses unequal client sizes, several tensors
of different shapes (one of size 1), float32 and float64, several seeds, and several rounds
for the stateful optimizers, so that momentum and moments build up.

Mapping. A Flower client returns its weights w^k = w_t + delta_k; Flower averages the
weights and its optimizers step on Delta = mean(w^k) - w_t. refsim averages the deltas
delta_k = w^k - w_t (what ``client_update`` returns) and steps on mean_delta with
``server_update``. Both sides run their own global model; each round's clients add the
same delta_k to the model they were sent, in their own dtype.

Flower's formulas, defaults, dtypes and the agreement measured here, with every
difference: ``docs/flower-semantics.md``.
"""

import inspect
import logging

import numpy as np
import pytest

from refsim.fedavg import ServerOpt, ServerOptConfig, init_server_state, server_update
from refsim.fedavg import weighted_average

flwr = pytest.importorskip("flwr", reason="Flower is a test-only cross-check: "
                                          "pip install 'flwr>=1.41,<1.43' (.ci/run does)")

from flwr.common import Code, FitRes, Status  # noqa: E402
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server import strategy as legacy  # noqa: E402
from flwr.server.strategy.aggregate import aggregate, aggregate_inplace  # noqa: E402

try:  # the Message API (ArrayRecord strategies); absent from older Flower releases
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord  # noqa: E402
    from flwr.app import RecordDict  # noqa: E402
    from flwr.serverapp import strategy as msgapi  # noqa: E402
except ImportError:  # pragma: no cover - depends on the installed Flower
    msgapi = None
try:  # where flwr 1.42 keeps the run/node/task ids that a new Message reads
    from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
except ImportError:  # pragma: no cover - depends on the installed Flower
    TaskIdentity = None

pytestmark = pytest.mark.flower

SHAPES = [(4, 3, 2), (7,), (1,), (3, 5)]  # the model's tensors, in layout order
P = sum(int(np.prod(s)) for s in SHAPES)  # 47 parameters
SEEDS = [0, 1, 2]
ROUNDS = 5
DTYPES = [np.float64, np.float32]

# |flower - refsim| <= atol + rtol * |refsim|, elementwise, per comparison and dtype. Inputs
# are O(1) weights (max |w| ~ 3.3) and ~0.1 deltas from <= 8 clients of 1..999 examples. The
# "measured" maxima are over seeds 0..9 with flwr 1.42.0 (docs/flower-semantics.md).
#   aggregate: refsim sums n_k * x_k in float64 in client order and rounds once. Flower's
#     aggregate does the same in the input dtype (float64: identical bits, see
#     test_aggregate_float64_is_bit_identical); aggregate_inplace and the Message API scale by
#     n_k / n first. Rounding bound ~ M eps |x|: float64 measured 4.4e-16 abs, float32
#     2.4e-7 abs (1 ulp at |x| < 4).
#   weights (after each of ROUNDS server steps): Flower steps on Delta = mean(w^k) - w_t,
#     refsim on mean(w^k - w_t); the two Deltas differ by ~eps |w|, which the adaptive
#     optimizers divide by ~sqrt(v) ~ |Delta|, and the two global models drift apart by that
#     much per round. float64 measured 1.3e-14 abs; float32 6.6e-6 abs (FedAdagrad, eta 0.3).
#   state (m, v, momentum after ROUNDS rounds; |m| <= 0.3, v ~ Delta^2 ~ 1e-2): float64
#     measured 1.1e-15 abs, float32 6.4e-7 abs (relative errors of up to 1e-2 only on
#     entries near 0, hence rtol + atol).
TOLERANCE = {
    "aggregate": {np.float64: dict(rtol=1e-13, atol=5e-15),
                  np.float32: dict(rtol=1e-6, atol=2e-6)},
    "weights": {np.float64: dict(rtol=1e-12, atol=1e-13), np.float32: dict(rtol=1e-5, atol=3e-5)},
    "state": {np.float64: dict(rtol=1e-10, atol=1e-14), np.float32: dict(rtol=1e-3, atol=5e-6)},
}


def _assert_agree(flower, refsim, what, kind, dtype):
    """Compare lists of tensors with the tolerance of (kind, dtype); report max abs/rel diff."""
    tol = TOLERANCE[kind][dtype]
    assert len(flower) == len(refsim), what
    for i, (f, r) in enumerate(zip(flower, refsim)):
        f64, r64 = np.asarray(f, np.float64), np.asarray(r, np.float64)
        assert f64.shape == r64.shape, f"{what}: tensor {i} shape {f64.shape} vs {r64.shape}"
        diff = np.abs(f64 - r64)
        rel = float((diff / np.maximum(np.abs(r64), 1e-30)).max())
        np.testing.assert_allclose(
            f64, r64, **tol,
            err_msg=f"{what}: tensor {i} {f64.shape}, max abs diff {diff.max():.3g}, "
                    f"max rel diff {rel:.3g}, tolerance {tol}")


@pytest.fixture(autouse=True)
def quiet_flower():
    """Flower logs each aggregation at INFO (and warns about metrics); keep the run quiet."""
    logger = logging.getLogger("flwr")
    old = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(old)


@pytest.fixture
def message_api():
    """The Message API strategies. Their ``configure_train`` builds instruction Messages,
    which read the process's run/node/task ids (set by a running ServerApp); set stand-ins
    for the test and restore whatever was there."""
    if msgapi is None:
        pytest.skip("this Flower has no Message API strategies (flwr.serverapp.strategy)")
    saved = {}
    if TaskIdentity is not None:
        for name, stand_in in (("run_id", 1), ("node_id", 0), ("task_id", 0)):
            try:
                saved[name] = getattr(TaskIdentity, name)
            except RuntimeError:  # not set: what a process outside a ServerApp has
                saved[name] = None
            setattr(TaskIdentity, name, stand_in)
    yield msgapi
    for name, value in saved.items():
        setattr(TaskIdentity, name, value)


class _Grid:
    """The part of a Flower ``Grid`` that ``configure_train`` reads: the connected nodes."""

    def __init__(self, num_nodes):
        self.num_nodes = num_nodes

    def get_node_ids(self):
        return list(range(1, self.num_nodes + 1))


# ---------------------------------------------------------------------------------------
# Inputs and the three drivers (refsim, legacy Flower, Message API Flower)
# ---------------------------------------------------------------------------------------

def _flat(tensors):
    """Concatenate tensors in layout order -> shape (P,)."""
    return np.concatenate([t.reshape(-1) for t in tensors])  # (P,)


def _split(vector):
    """Inverse of _flat: shape (P,) -> list of tensors shaped as SHAPES."""
    assert vector.shape == (P,), vector.shape
    out, start = [], 0
    for shape in SHAPES:
        size = int(np.prod(shape))
        out.append(vector[start:start + size].reshape(shape))
        start += size
    return out


def _initial_weights(seed, dtype):
    rng = np.random.default_rng([seed, 0])
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _draw_rounds(seed, dtype, rounds=ROUNDS):
    """Per round: (deltas, sizes); deltas[k] is client k's list of tensors (~0.1 N(0, 1)),
    sizes[k] its example count, a Python int as Flower receives it, unequal across clients."""
    out = []
    for t in range(1, rounds + 1):
        rng = np.random.default_rng([seed, 1, t])
        num_clients = int(rng.integers(3, 9))
        sizes = [int(n) for n in rng.integers(1, 1000, size=num_clients)]
        assert len(set(sizes)) > 1
        deltas = [[(0.1 * rng.standard_normal(s)).astype(dtype) for s in SHAPES]
                  for _ in range(num_clients)]
        out.append((deltas, sizes))
    return out


def _client_weights(global_weights, deltas, dtype):
    """What a client sends back: the model it was sent (in its own dtype) plus its delta."""
    return [np.asarray(g).astype(dtype) + d for g, d in zip(global_weights, deltas)]


def _run_refsim(opt, w0, rounds):
    """refsim's server side round by round; returns ([weights after each round], state)."""
    w = _flat(w0)  # (P,)
    state = init_server_state(opt, w)
    history = []
    for t, (deltas, sizes) in enumerate(rounds, start=1):
        client_params = [w + _flat(d) for d in deltas]  # each (P,): w^k = w_t + delta_k
        updates = [p - w for p in client_params]  # each (P,): delta_k = w^k - w_t
        mean = weighted_average(updates, sizes)  # (P,)
        w, state = server_update(w, mean, state, opt, round_=t)
        history.append(_split(w))
    return history, state


def _fit_res(tensors, num_examples):
    return FitRes(status=Status(code=Code.OK, message=""),
                  parameters=ndarrays_to_parameters(tensors),
                  num_examples=num_examples, metrics={})


def _run_legacy(strategy, rounds, dtype):
    """A legacy strategy's aggregate_fit round by round (the client proxy is unused)."""
    w = parameters_to_ndarrays(strategy.initial_parameters)
    history = []
    for t, (deltas, sizes) in enumerate(rounds, start=1):
        results = [(None, _fit_res(_client_weights(w, d, dtype), n))
                   for d, n in zip(deltas, sizes)]
        params, _ = strategy.aggregate_fit(t, results, [])
        w = parameters_to_ndarrays(params)
        history.append(w)
    return history


def _record(tensors):
    return ArrayRecord({f"t{i}": Array(np.ascontiguousarray(x)) for i, x in enumerate(tensors)})


def _unrecord(record):
    return [record[f"t{i}"].numpy() for i in range(len(SHAPES))]


def _run_message(strategy, w0, rounds, dtype):
    """A Message API strategy as its own ``start`` loop drives it: configure_train with the
    current arrays, then aggregate_train on one reply per client (in client order).
    configure_train samples nodes with Python's global ``random``; which node carries which
    reply does not enter the average, so the draw has no effect on the result."""
    arrays = _record(w0)
    history = []
    for t, (deltas, sizes) in enumerate(rounds, start=1):
        instructions = list(strategy.configure_train(t, arrays, ConfigRecord(),
                                                     _Grid(len(sizes))))
        assert len(instructions) == len(sizes)
        w = _unrecord(arrays)
        replies = [
            Message(RecordDict({"arrays": _record(_client_weights(w, d, dtype)),
                                "metrics": MetricRecord({"num-examples": n})}),
                    reply_to=ins)
            for ins, d, n in zip(instructions, deltas, sizes)]
        arrays, _ = strategy.aggregate_train(t, replies)
        history.append(_unrecord(arrays))
    return history


# ---------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------

def _flower_average(impl, clients, sizes):
    """Flower's weighted average of the clients' tensor lists through ``impl``."""
    if impl == "aggregate":
        return aggregate([(c, n) for c, n in zip(clients, sizes)])
    if impl == "aggregate_inplace":
        return aggregate_inplace([(None, _fit_res(c, n)) for c, n in zip(clients, sizes)])
    if impl in ("FedAvg(inplace=True)", "FedAvg(inplace=False)"):
        strategy = legacy.FedAvg(inplace=impl.endswith("True)"))
        params, _ = strategy.aggregate_fit(1, [(None, _fit_res(c, n))
                                               for c, n in zip(clients, sizes)], [])
        return parameters_to_ndarrays(params)
    raise AssertionError(impl)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("impl", ["aggregate", "aggregate_inplace", "FedAvg(inplace=True)",
                                  "FedAvg(inplace=False)"])
def test_flower_aggregation_equals_weighted_average(impl, seed, dtype):
    w0 = _initial_weights(seed, dtype)
    deltas, sizes = _draw_rounds(seed, dtype, rounds=1)[0]
    clients = [_client_weights(w0, d, dtype) for d in deltas]
    flower = _flower_average(impl, [[c.copy() for c in cl] for cl in clients], sizes)
    ours = _split(weighted_average([_flat(c) for c in clients], sizes))
    _assert_agree(flower, ours, f"{impl} seed={seed} {np.dtype(dtype)} sizes={sizes}",
                  "aggregate", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_message_api_fedavg_equals_weighted_average(message_api, seed, dtype):
    w0 = _initial_weights(seed, dtype)
    rounds = _draw_rounds(seed, dtype, rounds=1)
    deltas, sizes = rounds[0]
    flower = _run_message(message_api.FedAvg(), w0, rounds, dtype)[0]
    ours = _split(weighted_average([_flat(_client_weights(w0, d, dtype)) for d in deltas],
                                   sizes))
    _assert_agree(flower, ours, f"serverapp FedAvg seed={seed} {np.dtype(dtype)}",
                  "aggregate", dtype)


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregate_float64_is_bit_identical(seed):
    """Flower's ``aggregate`` forms sum(n_k * x_k) in client order and divides once, as
    ``weighted_average`` does; in float64 the two give the same bits."""
    w0 = _initial_weights(seed, np.float64)
    deltas, sizes = _draw_rounds(seed, np.float64, rounds=1)[0]
    clients = [_client_weights(w0, d, np.float64) for d in deltas]
    flower = aggregate([(c, n) for c, n in zip(clients, sizes)])
    ours = _split(weighted_average([_flat(c) for c in clients], sizes))
    for f, r in zip(flower, ours):
        np.testing.assert_array_equal(f, r, err_msg=f"seed={seed} sizes={sizes}")


def test_uniform_weighting_does_not_match_flower_aggregate():
    """The comparison can fail: equal weights (refsim's Weighting.UNIFORM) on clients of
    unequal size are far outside the tolerance of Flower's example-weighted average."""
    dtype = np.float64
    w0 = _initial_weights(0, dtype)
    deltas, sizes = _draw_rounds(0, dtype, rounds=1)[0]
    clients = [_client_weights(w0, d, dtype) for d in deltas]
    flower = _flat(aggregate([(c, n) for c, n in zip(clients, sizes)]))
    uniform = weighted_average([_flat(c) for c in clients], [1] * len(clients))
    weighted = weighted_average([_flat(c) for c in clients], sizes)
    assert np.abs(flower - weighted).max() < 1e-14
    assert np.abs(flower - uniform).max() > 1e-3


def test_zero_total_weight_flower_vs_refsim():
    """Nobody reported any examples: Flower's aggregate returns NaN (with NumPy's 0/0
    RuntimeWarning), aggregate_inplace raises ZeroDivisionError; refsim raises ValueError."""
    x = [np.ones(2)]
    with pytest.warns(RuntimeWarning, match="invalid value"):
        out = aggregate([(x, 0), (x, 0)])
    assert np.isnan(out[0]).all()
    with pytest.raises(ZeroDivisionError):
        aggregate_inplace([(None, _fit_res(x, 0)), (None, _fit_res(x, 0))])
    with pytest.raises(ValueError, match="total weight"):
        weighted_average([np.ones(2), np.ones(2)], [0, 0])


# ---------------------------------------------------------------------------------------
# Server optimizers
# ---------------------------------------------------------------------------------------

# name -> (legacy strategy factory, Message API factory, refsim config at the same settings).
# The legacy factories take the initial Parameters (FedOpt requires them; FedAvgM needs them
# for its server step). Constructors are called at Flower's defaults where a name says so.
OPTIMIZERS = {
    "FedAvg": (lambda p: legacy.FedAvg(initial_parameters=p),
               lambda m: m.FedAvg(),
               ServerOptConfig()),
    "FedAvgM(lr=1.5, momentum=0) = server SGD": (
        lambda p: legacy.FedAvgM(initial_parameters=p, server_learning_rate=1.5),
        lambda m: m.FedAvgM(server_learning_rate=1.5),
        ServerOptConfig(ServerOpt.SGD, lr=1.5)),
    "FedAvgM(lr=0.7, momentum=0.9)": (
        lambda p: legacy.FedAvgM(initial_parameters=p, server_learning_rate=0.7,
                                 server_momentum=0.9),
        lambda m: m.FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
        ServerOptConfig(ServerOpt.MOMENTUM, lr=0.7, momentum=0.9)),
    "FedAdam defaults": (lambda p: legacy.FedAdam(initial_parameters=p),
                         None,
                         ServerOptConfig.fedadam()),
    "FedAdam(eta=0.03, b1=0.8, b2=0.95, tau=1e-4)": (
        lambda p: legacy.FedAdam(initial_parameters=p, eta=0.03, beta_1=0.8, beta_2=0.95,
                                 tau=1e-4),
        lambda m: m.FedAdam(eta=0.03, beta_1=0.8, beta_2=0.95, tau=1e-4),
        ServerOptConfig.fedadam(lr=0.03, beta1=0.8, beta2=0.95, tau=1e-4)),
    "FedYogi defaults": (lambda p: legacy.FedYogi(initial_parameters=p),
                         lambda m: m.FedYogi(),
                         ServerOptConfig.fedyogi()),
    "FedYogi(eta=0.05, b1=0.5, b2=0.9, tau=1e-2)": (
        lambda p: legacy.FedYogi(initial_parameters=p, eta=0.05, beta_1=0.5, beta_2=0.9,
                                 tau=1e-2),
        lambda m: m.FedYogi(eta=0.05, beta_1=0.5, beta_2=0.9, tau=1e-2),
        ServerOptConfig.fedyogi(lr=0.05, beta1=0.5, beta2=0.9, tau=1e-2)),
    "FedAdagrad defaults": (lambda p: legacy.FedAdagrad(initial_parameters=p),
                            None,
                            ServerOptConfig.fedadagrad()),
    "FedAdagrad(eta=0.3, tau=1e-3)": (
        lambda p: legacy.FedAdagrad(initial_parameters=p, eta=0.3, tau=1e-3),
        lambda m: m.FedAdagrad(eta=0.3, tau=1e-3),
        ServerOptConfig.fedadagrad(lr=0.3, tau=1e-3)),
    # The Message API's own defaults (tau = 1e-3, not the legacy 1e-9).
    "serverapp FedAdam defaults": (None, lambda m: m.FedAdam(), ServerOptConfig.fedadam(tau=1e-3)),
    "serverapp FedAdagrad defaults": (None, lambda m: m.FedAdagrad(),
                                      ServerOptConfig.fedadagrad(tau=1e-3)),
}


def _flower_state(strategy, kind):
    """The optimizer state Flower keeps in public attributes, as refsim's state dict."""
    def as_list(x):
        return [x[f"t{i}"] for i in range(len(SHAPES))] if isinstance(x, dict) else list(x)
    if kind is ServerOpt.MOMENTUM:
        return {"v": as_list(strategy.momentum_vector)}
    if kind in (ServerOpt.ADAM, ServerOpt.YOGI, ServerOpt.ADAGRAD):
        return {"m": as_list(strategy.m_t), "v": as_list(strategy.v_t)}
    return {}


def _check_run(name, strategy, flower_history, seed, dtype, api):
    opt = OPTIMIZERS[name][2]
    w0 = _initial_weights(seed, dtype)
    ours, state = _run_refsim(opt, w0, _draw_rounds(seed, dtype))
    for t, (f, r) in enumerate(zip(flower_history, ours), start=1):
        _assert_agree(f, r, f"{api} {name} round {t} seed={seed} {np.dtype(dtype)}",
                      "weights", dtype)
    flower_state = _flower_state(strategy, opt.kind)
    assert flower_state.keys() == state.keys()
    for key in state:
        _assert_agree(flower_state[key], _split(state[key]),
                      f"{api} {name} state {key!r} after {ROUNDS} rounds seed={seed} "
                      f"{np.dtype(dtype)}", "state", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("name", [n for n, v in OPTIMIZERS.items() if v[0] is not None])
def test_legacy_strategy_server_step_equals_server_update(name, seed, dtype):
    w0 = _initial_weights(seed, dtype)
    strategy = OPTIMIZERS[name][0](ndarrays_to_parameters(w0))
    history = _run_legacy(strategy, _draw_rounds(seed, dtype), dtype)
    _check_run(name, strategy, history, seed, dtype, "flwr.server.strategy")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("name", [n for n, v in OPTIMIZERS.items() if v[1] is not None])
def test_message_api_strategy_server_step_equals_server_update(message_api, name, seed, dtype):
    w0 = _initial_weights(seed, dtype)
    strategy = OPTIMIZERS[name][1](message_api)
    history = _run_message(strategy, w0, _draw_rounds(seed, dtype), dtype)
    _check_run(name, strategy, history, seed, dtype, "flwr.serverapp.strategy")


def test_fedadam_without_bias_correction_does_not_match():
    """Reddi et al.'s Algorithm 2 as printed (no bias correction) is not Flower's FedAdam."""
    dtype = np.float64
    w0 = _initial_weights(0, dtype)
    rounds = _draw_rounds(0, dtype)
    history = _run_legacy(legacy.FedAdam(initial_parameters=ndarrays_to_parameters(w0)),
                          rounds, dtype)
    paper, _ = _run_refsim(ServerOptConfig.fedadam(bias_correction=False), w0, rounds)
    assert np.abs(_flat(history[0]) - _flat(paper[0])).max() > 1e-3


def _one_step_eta(flower_step, server_round, c, beta1, beta2, tau):
    """Recover Flower FedAdam's effective learning rate from one step from w = 0 with a
    single client at w = c: m = (1 - b1) c, v = (1 - b2) c^2, so
    w_new = eta_t (1 - b1) c / (sqrt(1 - b2) |c| + tau)."""
    w_new = flower_step(server_round, c)  # (3,)
    return w_new * (np.sqrt(1 - beta2) * np.abs(c) + tau) / ((1 - beta1) * c)  # (3,)


def _legacy_adam_step(server_round, c):
    strategy = legacy.FedAdam(initial_parameters=ndarrays_to_parameters([np.zeros(3)]))
    params, _ = strategy.aggregate_fit(server_round, [(None, _fit_res([c], 7))], [])
    return parameters_to_ndarrays(params)[0]


@pytest.mark.parametrize("server_round", [1, 2, 3, 7, 50])
def test_fedadam_bias_correction_exponent_is_round_plus_one(server_round):
    """Flower's eta_t = eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)), t = server_round from 1:
    one more than Kingma & Ba's (and TFF's) exponent t, so round 1 steps 0.74246 eta, not eta."""
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-9  # Flower's defaults (test_legacy_defaults...)
    c = np.array([0.5, -0.25, 2.0])
    got = _one_step_eta(_legacy_adam_step, server_round, c, b1, b2, tau)  # (3,)
    t = server_round
    flower_formula = eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
    kingma_ba = eta * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    np.testing.assert_allclose(got, flower_formula, rtol=1e-12,
                               err_msg=f"FedAdam eta_t at server_round={t}")
    # Both tend to eta, slowly (b2^t): at t = 50 they still differ by 0.7 %.
    assert abs(flower_formula - kingma_ba) > 1e-3 * eta
    # refsim reproduces it through round_ = server_round:
    new, _ = server_update(np.zeros(3), c, init_server_state(ServerOptConfig.fedadam(),
                                                             np.zeros(3)),
                           ServerOptConfig.fedadam(), round_=t)
    np.testing.assert_allclose(new, _legacy_adam_step(t, c), rtol=1e-13, atol=0)
    if t == 1:
        # sqrt(1 - 0.99^2) / (1 - 0.9^2) = sqrt(0.0199) / 0.19, where Kingma & Ba have 1
        np.testing.assert_allclose(flower_formula / eta, 0.7424597884034683, rtol=1e-12)


def test_message_api_fedadam_uses_the_same_bias_correction(message_api):
    c = np.array([0.5, -0.25, 2.0])
    for t in (1, 4):
        strategy = message_api.FedAdam(tau=1e-9)
        arrays = ArrayRecord({"w": Array(np.zeros(3))})
        (ins, *_) = list(strategy.configure_train(t, arrays, ConfigRecord(), _Grid(2)))
        reply = Message(RecordDict({"arrays": ArrayRecord({"w": Array(c)}),
                                    "metrics": MetricRecord({"num-examples": 3})}),
                        reply_to=ins)
        out, _ = strategy.aggregate_train(t, [reply])
        np.testing.assert_allclose(out["w"].numpy(), _legacy_adam_step(t, c), rtol=1e-15,
                                   err_msg=f"serverapp vs legacy FedAdam, server_round={t}")


def test_legacy_fedavgm_momentum_is_keyed_on_the_round_number():
    """Legacy FedAvgM starts its momentum only when server_round == 1 (and asserts it exists
    later); the Message API FedAvgM and refsim start it on their first call, at any round."""
    w0 = [np.zeros(3)]
    strategy = legacy.FedAvgM(initial_parameters=ndarrays_to_parameters(w0),
                              server_momentum=0.9)
    with pytest.raises(AssertionError, match="Momentum should have been created"):
        strategy.aggregate_fit(2, [(None, _fit_res([np.ones(3)], 1))], [])


# ---------------------------------------------------------------------------------------
# Defaults and dtypes
# ---------------------------------------------------------------------------------------

def _defaults(cls, *names):
    params = inspect.signature(cls.__init__).parameters
    return tuple(params[n].default for n in names)


def test_legacy_defaults_are_refsims_constructors():
    """ServerOptConfig.fedadam/fedyogi/fedadagrad() are flwr.server.strategy's defaults."""
    adam, yogi, adagrad = (ServerOptConfig.fedadam(), ServerOptConfig.fedyogi(),
                           ServerOptConfig.fedadagrad())
    assert _defaults(legacy.FedAdam, "eta", "beta_1", "beta_2", "tau") == (
        adam.lr, adam.beta1, adam.beta2, adam.tau) == (0.1, 0.9, 0.99, 1e-9)
    assert adam.bias_correction
    assert _defaults(legacy.FedYogi, "eta", "beta_1", "beta_2", "tau") == (
        yogi.lr, yogi.beta1, yogi.beta2, yogi.tau) == (0.01, 0.9, 0.99, 1e-3)
    assert _defaults(legacy.FedAdagrad, "eta", "tau") == (adagrad.lr, adagrad.tau) == (0.1, 1e-9)
    assert "beta_1" not in inspect.signature(legacy.FedAdagrad.__init__).parameters
    strategy = legacy.FedAdagrad(initial_parameters=ndarrays_to_parameters([np.zeros(1)]))
    assert strategy.beta_1 == adagrad.beta1 == 0.0
    # FedAvgM's defaults (lr 1, momentum 0) switch its server step off: plain FedAvg.
    assert _defaults(legacy.FedAvgM, "server_learning_rate", "server_momentum") == (1.0, 0.0)
    assert ServerOptConfig() == ServerOptConfig(ServerOpt.SGD, lr=1.0)


def test_message_api_defaults_differ_from_legacy_in_tau(message_api):
    """flwr.serverapp.strategy's FedAdam and FedAdagrad default to tau = 1e-3, not the legacy
    1e-9 that ServerOptConfig.fedadam/fedadagrad() use; everything else agrees."""
    m = message_api
    assert _defaults(m.FedAdam, "eta", "beta_1", "beta_2", "tau") == (0.1, 0.9, 0.99, 1e-3)
    assert _defaults(m.FedYogi, "eta", "beta_1", "beta_2", "tau") == (0.01, 0.9, 0.99, 1e-3)
    assert _defaults(m.FedAdagrad, "eta", "tau") == (0.1, 1e-3)
    assert _defaults(m.FedAvgM, "server_learning_rate", "server_momentum") == (1.0, 0.0)
    assert ServerOptConfig.fedadam().tau == ServerOptConfig.fedadagrad().tau == 1e-9


# Output dtype of one round on float32 clients, as measured with flwr 1.42.0 / NumPy 2.
# FedAdam's eta_t is a NumPy float64 scalar (np.sqrt / np.power of Python floats), which
# NumPy 2 does not demote, so its new weights (and from round 2 its m and v) are float64.
FLOAT32_OUTPUT = {"FedAvg": np.float32, "FedAvgM(lr=0.7, momentum=0.9)": np.float32,
                  "FedAdam(eta=0.03, b1=0.8, b2=0.95, tau=1e-4)": np.float64,
                  "FedYogi defaults": np.float32, "FedAdagrad(eta=0.3, tau=1e-3)": np.float32}


@pytest.mark.parametrize("name", list(FLOAT32_OUTPUT))
def test_output_dtypes(name, request):
    """refsim keeps float32; Flower does too, except FedAdam (float64), in both APIs."""
    w0 = _initial_weights(0, np.float32)
    rounds = _draw_rounds(0, np.float32, rounds=2)
    ours, _ = _run_refsim(OPTIMIZERS[name][2], w0, rounds)
    assert all(x.dtype == np.float32 for x in ours[-1])
    history = _run_legacy(OPTIMIZERS[name][0](ndarrays_to_parameters(w0)), rounds, np.float32)
    assert [x.dtype for x in history[-1]] == [np.dtype(FLOAT32_OUTPUT[name])] * len(SHAPES)
    if msgapi is not None:
        message_api = request.getfixturevalue("message_api")
        history = _run_message(OPTIMIZERS[name][1](message_api), w0, rounds, np.float32)
        assert [x.dtype for x in history[-1]] == [np.dtype(FLOAT32_OUTPUT[name])] * len(SHAPES)


@pytest.mark.parametrize("impl", ["aggregate", "aggregate_inplace"])
def test_aggregation_keeps_float32(impl):
    """Neither aggregation function widens float32 (Python-int weights stay weak in NumPy 2)."""
    w0 = _initial_weights(0, np.float32)
    deltas, sizes = _draw_rounds(0, np.float32, rounds=1)[0]
    clients = [_client_weights(w0, d, np.float32) for d in deltas]
    out = _flower_average(impl, clients, sizes)
    assert [x.dtype for x in out] == [np.dtype(np.float32)] * len(SHAPES)
