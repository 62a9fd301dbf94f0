"""TFF's server optimizers, step for step: ``ServerOptConfig(..., semantics=ServerSemantics.TFF)``.

The formulas, defaults and state of TensorFlow Federated 0.87's ``tff.learning.optimizers``
(``python/learning/optimizers/{sgdm,adam,yogi,adagrad}.py``), used as the server optimizer of
``tff.learning.algorithms.build_weighted_fed_avg``. TFF's server receives the aggregated client
update ``initial - trained`` (``learning/templates/model_delta_client_work.py``) and
``learning/templates/apply_optimizer_finalizer.py`` hands it to ``optimizer.next`` as the
gradient, so TFF's g is refsim's g = -mean delta. t is the number of ``next`` calls, 1 on the
first: refsim's round t. The FedOpt view is Reddi et al., "Adaptive Federated Optimization",
ICLR 2021, arXiv:2003.00295, Algorithm 2; TFF's choices differ from Flower's (``server.py``):

    SGD       w <- w - lr * g
    MOMENTUM  a <- mu * a + g;  w <- w - lr * a                        a_0 = 0
    ADAM      a <- a + (g - a) * (1 - b1);  p <- p + (g^2 - p) * (1 - b2)   a_0 = p_0 = 0
              lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)                   (float32, see below)
              w <- w - lr_t * a / (sqrt(p) + eps)                        (``tff_adam.py``)
    YOGI      a as ADAM;  p <- p + (1 - b2) * sign(g^2 - p) * g^2;  p_0 = p0 (1e-6)
              lr_t as ADAM;  w <- w - lr_t * a / (sqrt(p) + eps)
    ADAGRAD   p <- p + g^2;  w <- w - lr * g / sqrt(p + eps)           p_0 = p0 (0.1)

a is TFF's "accumulator", p its "preconditioner"; they are the state keys here. The
accumulator tracks g (Flower's m tracks Delta = -g). Each operation is written in TFF's order.

Floating point (what TFF does with Python-float hyperparameters, which it stores in its
server state as float32 tensors): lr, mu, b1, b2 and eps are float32 numbers, cast to the
weights' dtype where they meet the weights; ADAM's and YOGI's lr_t is computed entirely in
float32 (``pow``, ``sqrt`` and the division) and then cast. So in a float64 run 1 - b1 is
1 - float64(float32(0.9)), not 0.1. Measured against TFF in ``tests/test_validation_tff.py``
(``docs/tff-semantics.md``).
"""

from __future__ import annotations

import numpy as np

from refsim.backend import get_xp
from refsim.fedavg.config import ServerOpt, ServerOptConfig
from refsim.fedavg.tff_adam import tff_adam_step, tff_normalized_lr

__all__ = ["init_tff_server_state", "tff_server_update", "tff_normalized_lr"]

_F32 = np.float32


def init_tff_server_state(opt: ServerOptConfig, params: np.ndarray) -> dict[str, np.ndarray]:
    """TFF's ``initialize``: {} for SGD; {"accumulator": 0} for MOMENTUM; {"accumulator": 0,
    "preconditioner": p0} for ADAM (p0 = 0) and YOGI; {"preconditioner": p0} for ADAGRAD.
    Each (P,), dtype of params; p0 = ``opt.initial_preconditioner`` rounded to float32 (TFF's
    ``tf.ones * tf.cast(p0, dtype)`` of the Python float).
    """
    xp = get_xp(params)
    p0 = params.dtype.type(_F32(opt.initial_preconditioner))
    if opt.kind is ServerOpt.MOMENTUM:
        return {"accumulator": xp.zeros_like(params)}
    if opt.kind in (ServerOpt.ADAM, ServerOpt.YOGI):
        return {"accumulator": xp.zeros_like(params),
                "preconditioner": xp.full_like(params, p0)}
    if opt.kind is ServerOpt.ADAGRAD:
        return {"preconditioner": xp.full_like(params, p0)}
    return {}


def tff_server_update(params: np.ndarray, mean_delta: np.ndarray, state: dict[str, np.ndarray],
                      opt: ServerOptConfig, round_: int
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """TFF's ``optimizer.next(state, w, g)`` with g = -mean_delta, at step t = ``round_``.

    Returns (w_{t+1}, new state); arithmetic in the dtype of params (TFF's float32
    hyperparameters cast to it, see the module docstring); inputs are not modified.
    """
    dt = params.dtype.type
    xp = get_xp(params)
    g = -mean_delta  # (P,)
    lr = dt(_F32(opt.lr))
    if opt.kind is ServerOpt.SGD:
        return params - lr * g, {}
    if opt.kind is ServerOpt.MOMENTUM:
        a = dt(_F32(opt.momentum)) * state["accumulator"] + g  # (P,)
        return params - lr * a, {"accumulator": a}
    p = state["preconditioner"]  # (P,)
    if opt.kind is ServerOpt.ADAGRAD:
        p = p + g * g  # (P,)
        return params - lr * g / xp.sqrt(p + dt(_F32(opt.tau))), {"preconditioner": p}
    w, a, p = tff_adam_step(params, g, state["accumulator"], p, opt.lr, opt.beta1, opt.beta2,
                            opt.tau, round_, yogi=opt.kind is ServerOpt.YOGI)
    return w, {"accumulator": a, "preconditioner": p}
