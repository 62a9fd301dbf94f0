"""TFF's robust aggregator: adaptive zeroing, then adaptive L2 clipping, then the weighted mean
(and, as TFF's compression aggregator, 8-bit quantization of the weighted updates).

References: TensorFlow Federated 0.87, ``tff.learning.robust_aggregator(zeroing=True,
clipping=True, weighted=True)`` and ``tff.learning.compression_aggregator()``
(``python/learning/model_update_aggregator.py``), composed of ``zeroing_factory`` and
``clipping_factory`` (``python/aggregators/robust.py``), ``PrivateQuantileEstimationProcess.
no_noise`` (``python/aggregators/quantile_estimation.py``) over tensorflow_privacy's
``NoPrivacyQuantileEstimatorQuery`` (``privacy/dp_query/quantile_estimator_query.py``) and
``MeanFactory`` (``python/aggregators/mean.py``). The quantile estimate is the geometric update
of Andrew, Thakkar et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS
2021, arXiv:1905.03871, Sec. 3, without noise.

Round t, reporting clients k = 1..m (ascending id), update x_k (all tensors j of the model),
weight w_k; the estimates C^Z (zeroing) and C^C (clipping) are server state:

    Z   = r * C^Z + i                                 the zeroing norm (r = 2, i = 1)
    a_k = ||x_k||_inf = max_j max |x_kj|
    y_k = 0 if a_k > Z else x_k                       zeroed; w_k is NOT changed
    c_k = ||y_k||_2 = sqrt(sum_j ||y_kj||_2^2)
    z_k = y_k / (c_k / C^C) if c_k > C^C else y_k     clipped to norm C^C
    mean = sum_k w_k z_k / sum_k w_k                  (compression: sum_k Q(w_k z_k) / sum_k w_k)
    C <- C * exp(-eta * (b - q)),  b = #{k : record_k <= C} / m   for each estimate, after use,
                                   with records a_k (zeroing) and c_k (clipping)

Zeroing is the outer stage: it sees the raw updates, clipping sees the zeroed ones (a zeroed
client has c_k = 0, below the clipping estimate). Defaults (``model_update_aggregator.py``):
zeroing C_0 = 10, q = 0.98, eta = ln 10, r = 2, i = 1 (Z = 21 in round 1); clipping C_0 = 1,
q = 0.8, eta = 0.2. The compression stage Q (``compression_aggregator``:
``EncodedSumFactory.quantize_above_threshold(8, 20000)``) quantizes each tensor of w_k z_k with
more than 20,000 elements to 8 bits between its min and max with stochastic rounding and
bit-packs it; refsim uses its own quantizer (``TFF_COMPRESSION_CODEC``, key (seed, t, k)), equal
to TFF's in distribution, not bit for bit (TFF's random stream cannot be replayed).

Floating point, as TFF (``NORM_TF_TYPE = float32``): a_k is float32(max |x_k|); ||y_kj||^2 is
float32(sqrt(s)^2) of the sum of squares s (float64), and the per-tensor terms are summed in
float32 in TensorFlow's order (:func:`tf_sum_f32`), then sqrt; the clip divisor c_k / C^C is
float32, the division in the update's dtype. b = float32(sum of +-1/2) / float32(m) + 1/2,
clamped to [0, 1]; exp is the correctly rounded float32 (TensorFlow's is one ulp off for a few
arguments, none below m = 15 clients: docs/tff-semantics.md). The mean is TFF's MeanFactory:
w_k z_k in the update dtype (w_k a float32), summed in client order in that dtype, divided by
the float32 sum of the w_k. Measured against TFF in ``tests/test_validation_tff.py``.

Where it runs: TFF zeroes, clips, weights and encodes on each client with the broadcast norms;
refsim's ``aggregate_round`` does the same arithmetic on the server, on the decoded updates.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from refsim.backend import get_xp
from refsim.compress import Codec, QuantizerConfig
from refsim.fedavg.transport import decode_tensors, encode_update

__all__ = ["AdaptiveNorm", "RobustAggregator", "TFF_ZEROING", "TFF_CLIPPING",
           "TFF_COMPRESSION_CODEC", "init_robust_state", "robust_mean", "tf_sum_f32"]

_F32 = np.float32
ZEROING_KEY, CLIPPING_KEY = "robust_zeroing_estimate", "robust_clipping_estimate"


def _number(name: str, value, lo: float, lo_open: bool, hi: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}"
                         + (f" and <= {hi}" if hi != math.inf else "") + f", got {value!r}")


@dataclass(frozen=True)
class AdaptiveNorm:
    """An adaptive norm bound (TFF's ``PrivateQuantileEstimationProcess.no_noise``).

    initial C_0 > 0, target_quantile q in [0, 1], learning_rate eta > 0; the bound used is
    multiplier * C + increment (multiplier > 0, increment >= 0), C the current estimate.
    """
    initial: float
    target_quantile: float
    learning_rate: float
    multiplier: float = 1.0
    increment: float = 0.0

    def __post_init__(self):
        _number("initial", self.initial, 0.0, True)
        _number("target_quantile", self.target_quantile, 0.0, False, 1.0)
        _number("learning_rate", self.learning_rate, 0.0, True)
        _number("multiplier", self.multiplier, 0.0, True)
        _number("increment", self.increment, 0.0, False)

    def bound(self, estimate: np.float32) -> np.float32:
        """multiplier * C + increment in float32 (TFF maps only when they are not 1 and 0)."""
        if self.multiplier == 1.0 and self.increment == 0.0:
            return estimate
        return _F32(self.multiplier) * estimate + _F32(self.increment)

    def update(self, estimate: np.float32, records) -> np.float32:
        """C * exp(-eta * (b - q)), b = the clamped fraction of ``records`` <= C (float32)."""
        half = _F32(0.5)
        shifted = _F32(0)
        for r in records:  # the +-1/2 records, summed in client order (exact in float32)
            shifted = shifted + (half if r <= estimate else -half)
        below = min(_F32(1), max(_F32(0), shifted / _F32(len(records)) + half))
        step = _F32(self.learning_rate) * (below - _F32(self.target_quantile))
        return estimate * _F32(math.exp(float(-step)))


TFF_ZEROING = AdaptiveNorm(10.0, 0.98, math.log(10.0), multiplier=2.0, increment=1.0)
TFF_CLIPPING = AdaptiveNorm(1.0, 0.8, 0.2)
# compression_aggregator's stage: 8-bit stochastic uniform quantization above 20,000 elements,
# bit-packed (refsim's format; TFF's sizes: refsim.compress.tff_bits).
TFF_COMPRESSION_CODEC = Codec(QuantizerConfig(bits=8, stochastic=True), threshold=20_000)


@dataclass(frozen=True)
class RobustAggregator:
    """TFF's robust aggregator (``FedAvgConfig.aggregator``), TFF's defaults.

    zeroing / clipping : the adaptive norms, or None to leave the stage out (TFF's
        ``zeroing=False`` / ``clipping=False``).
    codec : None (``robust_aggregator``) or the compression stage applied to each w_k z_k
        (``TFF_COMPRESSION_CODEC``: ``compression_aggregator``).

    >>> float(RobustAggregator().zeroing.bound(np.float32(10.0)))
    21.0
    """
    zeroing: AdaptiveNorm | None = TFF_ZEROING
    clipping: AdaptiveNorm | None = TFF_CLIPPING
    codec: Codec | None = None

    def __post_init__(self):
        for name in ("zeroing", "clipping"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, AdaptiveNorm):
                raise TypeError(f"aggregator.{name} must be an AdaptiveNorm or None, got "
                                f"{type(value).__name__}")
        if self.codec is not None and not isinstance(self.codec, Codec):
            raise TypeError(f"aggregator.codec must be a Codec or None, got "
                            f"{type(self.codec).__name__}")

    @classmethod
    def tff_compression(cls, zeroing: AdaptiveNorm | None = TFF_ZEROING,
                        clipping: AdaptiveNorm | None = TFF_CLIPPING) -> "RobustAggregator":
        """TFF's ``compression_aggregator()``: the robust stages, then 8-bit quantization."""
        return cls(zeroing, clipping, TFF_COMPRESSION_CODEC)

    def to_dict(self) -> dict:
        norm = (lambda a: None if a is None else {
            "initial": a.initial, "target_quantile": a.target_quantile,
            "learning_rate": a.learning_rate, "multiplier": a.multiplier,
            "increment": a.increment})
        return {"zeroing": norm(self.zeroing), "clipping": norm(self.clipping),
                "codec": None if self.codec is None else repr(self.codec)}


def init_robust_state(agg: RobustAggregator) -> dict[str, np.ndarray]:
    """The estimates before round 1: C_0 of each stage as a float32 0-d array."""
    state = {}
    if agg.zeroing is not None:
        state[ZEROING_KEY] = np.array(agg.zeroing.initial, np.float32)
    if agg.clipping is not None:
        state[CLIPPING_KEY] = np.array(agg.clipping.initial, np.float32)
    return state


def tf_sum_f32(values) -> np.float32:
    """``tf.reduce_sum`` of a short float32 vector as TensorFlow 2.14's x86 CPU kernel forms it
    (Eigen, 8-lane AVX packets): the first 8 * floor(n / 8) values into 8 lane sums, the lanes
    added as a tree (i + 4, then i + 2, then i + 1), plus the rest summed left to right.
    Checked against TensorFlow for n = 2..11 (``docs/tff-semantics.md``).

    >>> float(tf_sum_f32([1.0, 2.0, 3.0]))
    6.0
    """
    v = [_F32(x) for x in values]
    packed = len(v) // 8 * 8
    rest = _F32(0)
    for x in v[packed:]:
        rest = rest + x
    if packed == 0:
        return rest
    lanes = [_F32(0)] * 8
    for j in range(0, packed, 8):
        lanes = [lanes[i] + v[j + i] for i in range(8)]
    while len(lanes) > 1:
        half = len(lanes) // 2
        lanes = [lanes[i] + lanes[i + half] for i in range(half)]
    return lanes[0] + rest


def _l2_norm(model, y) -> np.float32:
    """c = sqrt(sum_j float32(||y_j||_2^2)) as TFF's ``_global_l2_norm``."""
    xp = get_xp(y)
    terms = []
    for v in model.views(y).values():  # per tensor, model.layout order
        s = float(xp.sum(v.astype(np.float64) ** 2))
        terms.append(_F32(math.sqrt(s) ** 2))
    return np.sqrt(tf_sum_f32(terms))


def robust_mean(updates, weights, state: dict, agg: RobustAggregator, model, seed: int,
                round_: int, clients) -> tuple:
    """The robust (or compressed) mean of round t (see the module docstring).

    Parameters
    ----------
    updates : list of ndarray, each (P,), one dtype   the decoded client updates x_k
    weights : list of numbers   w_k (n_k, or 1 for uniform weighting), one per update
    state : dict   holds the estimates (``init_robust_state``); other keys are ignored
    agg, model : the aggregator and the model (tensor boundaries, the codec's tensors)
    seed, round_, clients : the quantization key (seed, t, k) of each update (codec only)

    Returns (mean (P,), new estimates, facts) with facts zeroing_norm, clipping_norm (the
    bounds used, or None), zeroed, clipped (positions in ``updates``), and with a codec
    uplink_bits and uplink_entropy_bits (sums over clients of the encoded update).
    """
    dtype = updates[0].dtype
    dt = dtype.type
    xp = get_xp(updates[0])
    new_state, facts = {}, {"zeroing_norm": None, "clipping_norm": None, "zeroed": (),
                            "clipped": ()}
    values = list(updates)
    if agg.zeroing is not None:
        est = _F32(float(state[ZEROING_KEY]))
        bound = agg.zeroing.bound(est)
        records = [_F32(float(xp.max(xp.abs(x)))) for x in values]  # a_k
        facts["zeroed"] = tuple(i for i, a in enumerate(records) if a > bound)
        values = [xp.zeros_like(x) if i in facts["zeroed"] else x for i, x in enumerate(values)]
        new_state[ZEROING_KEY] = np.array(agg.zeroing.update(est, records), np.float32)
        facts["zeroing_norm"] = float(bound)
    if agg.clipping is not None:
        est = _F32(float(state[CLIPPING_KEY]))
        bound = agg.clipping.bound(est)
        records = [_l2_norm(model, y) for y in values]  # c_k
        facts["clipped"] = tuple(i for i, c in enumerate(records) if c > bound)
        values = [y / dt(records[i] / bound) if i in facts["clipped"] else y
                  for i, y in enumerate(values)]
        new_state[CLIPPING_KEY] = np.array(agg.clipping.update(est, records), np.float32)
        facts["clipping_norm"] = float(bound)
    weighted = [z * dt(_F32(w)) for z, w in zip(values, weights)]  # (P,) each, w_k z_k
    if agg.codec is not None:
        bits, entropy = 0, []
        for i, v in enumerate(weighted):
            payload, b, h = encode_update(agg.codec, model, v, seed, round_, int(clients[i]))
            weighted[i] = xp.asarray(decode_tensors(payload, model, dtype))  # Q(w_k z_k)
            bits, entropy = bits + b, entropy + [h]
        facts["uplink_bits"] = bits
        facts["uplink_entropy_bits"] = None if None in entropy else sum(entropy)
    total = weighted[0]
    for v in weighted[1:]:
        total = total + v  # (P,) in client order, in the update dtype
    weight_sum = _F32(0)
    for w in weights:
        weight_sum = weight_sum + _F32(w)
    if weight_sum == 0:
        raise ValueError("robust_mean: the total weight sum(w_k) is 0")
    return total / dt(weight_sum), new_state, facts
