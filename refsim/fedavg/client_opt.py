"""The optimizer a client's local steps use: plain SGD (the paper), SGD with momentum, Adam.

McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1 trains clients with plain SGD,
w <- w - eta * g. Flower's CIFAR-10 tutorial builds ``torch.optim.Adam`` inside ``fit``, so
its clients start every round from a fresh Adam state. Both are here, with the update rules
of ``torch.optim`` 2.13 (its documented algorithms, single-tensor CPU path, no weight decay,
no dampening, no Nesterov, no AMSGrad), g the minibatch gradient of step s = 1, 2, ...:

SGD (``ClientOpt.SGD``): w <- w - eta * g, exactly ``refsim.nn.sgd_step``.

Momentum (``ClientOpt.MOMENTUM``, ``torch.optim.SGD(momentum=mu)``)::

    b_1 = g_1;   b_s = mu * b_{s-1} + g_s (s > 1);   w <- w - eta * b_s

Adam (``ClientOpt.ADAM``, Kingma & Ba, ICLR 2015, arXiv:1412.6980, Algorithm 1, as
``torch.optim.Adam``; defaults beta1 0.9, beta2 0.999, eps 1e-8)::

    m_s = m_{s-1} + (1 - beta1) * (g - m_{s-1})      (torch's lerp: beta1 m + (1 - beta1) g)
    v_s = beta2 * v_{s-1} + (1 - beta2) * g * g
    w  <- w - (eta / (1 - beta1^s)) * m_s / (sqrt(v_s) / sqrt(1 - beta2^s) + eps)

with m_0 = v_0 = 0. eps is added *outside* the square root, after dividing by the bias
correction sqrt(1 - beta2^s), as torch does (Kingma & Ba's eps-hat form).

TFF's Adam (``ClientOpt.ADAM_TFF``, ``tff.learning.optimizers.build_adam``, TFF's default eps is
1e-7: give it) adds eps *before* the bias correction and computes in TFF's float32
hyperparameters (``tff_adam.py``)::

    w <- w - eta sqrt(1 - beta2^s) / (1 - beta1^s) * m_s / (sqrt(v_s) + eps)

The two agree only with eps scaled by sqrt(1 - beta2^s) at every step (``docs/fedavg.md``).

The state (s, and b or m and v) belongs to one client. ``ClientStatePolicy.RESET`` gives
every client a fresh state in every round (the Flower tutorial; TFF's client optimizers);
``KEEP`` carries client k's state from the last round it trained to the next, held with the
server state under the keys ``client<k>.<name>`` (so checkpoints carry it and a resumed run
stays bit for bit; 2P floats per client that has trained, for Adam).
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass

import numpy as np

from refsim.backend import get_xp
from refsim.fedavg.tff_adam import tff_adam_step
from refsim.nn import sgd_step

__all__ = ["ClientOpt", "ClientStatePolicy", "ClientOptConfig", "init_client_state",
           "client_opt_step", "CLIENT_STATE_PREFIX", "split_client_states",
           "join_client_states", "client_state_like"]

CLIENT_STATE_PREFIX = "client"  # server-state key of client k's array: client<k>.<name>


class ClientOpt(enum.Enum):
    """Which update rule a client's local steps use (module docstring)."""
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
    ADAM_TFF = "adam-tff"


class ClientStatePolicy(enum.Enum):
    """Whether a client's optimizer state lasts one round (``reset``) or across rounds."""
    RESET = "reset"
    KEEP = "keep"


def _real(name: str, value: object, lo: float, hi: float, lo_open: bool, hi_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"client_opt.{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
        raise ValueError(f"client_opt.{name} must be in {'(' if lo_open else '['}{lo}, {hi}"
                         f"{')' if hi_open else ']'}, got {value!r}")


@dataclass(frozen=True)
class ClientOptConfig:
    """A client optimizer and its state policy; defaults are torch.optim's.

    >>> ClientOptConfig(ClientOpt.ADAM).eps, ClientOptConfig().kind.value
    (1e-08, 'sgd')
    >>> ClientOptConfig(ClientOpt.ADAM, beta2=1.0)
    Traceback (most recent call last):
    ...
    ValueError: client_opt.beta2 must be in [0.0, 1.0), got 1.0
    """
    kind: ClientOpt = ClientOpt.SGD
    momentum: float = 0.9      # mu of MOMENTUM, in (0, 1)
    beta1: float = 0.9         # ADAM, ADAM_TFF, in [0, 1)
    beta2: float = 0.999       # ADAM, ADAM_TFF, in [0, 1)
    eps: float = 1e-8          # ADAM (ADAM_TFF: TFF's default is 1e-7), > 0
    state: ClientStatePolicy = ClientStatePolicy.RESET

    def __post_init__(self):
        if not isinstance(self.kind, ClientOpt):
            raise TypeError(f"client_opt.kind must be a ClientOpt, got {self.kind!r}")
        if not isinstance(self.state, ClientStatePolicy):
            raise TypeError(f"client_opt.state must be a ClientStatePolicy, got {self.state!r}")
        _real("momentum", self.momentum, 0.0, 1.0, True, True)
        _real("beta1", self.beta1, 0.0, 1.0, False, True)
        _real("beta2", self.beta2, 0.0, 1.0, False, True)
        _real("eps", self.eps, 0.0, math.inf, True, True)
        if self.kind is ClientOpt.SGD and self.state is ClientStatePolicy.KEEP:
            raise ValueError("client_opt.state 'keep' needs a client optimizer with a state "
                             "(momentum or adam); plain SGD has none")

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "momentum": self.momentum, "beta1": self.beta1,
                "beta2": self.beta2, "eps": self.eps, "state": self.state.value}


def init_client_state(opt: ClientOptConfig, params) -> dict:
    """The state before a client's first step: {} for SGD; step 0 and zero buffers (of the
    shape, dtype and device of ``params``) otherwise."""
    xp = get_xp(params)
    if opt.kind is ClientOpt.SGD:
        return {}
    if opt.kind is ClientOpt.MOMENTUM:
        return {"step": np.int64(0), "momentum_buffer": xp.zeros_like(params)}
    if opt.kind is ClientOpt.ADAM_TFF:
        return {"step": np.int64(0), "accumulator": xp.zeros_like(params),
                "preconditioner": xp.zeros_like(params)}
    return {"step": np.int64(0), "exp_avg": xp.zeros_like(params),
            "exp_avg_sq": xp.zeros_like(params)}


def client_opt_step(opt: ClientOptConfig, w, g, lr: float, state: dict, out=None):
    """One local step: (w_{s}, state_s) from (w_{s-1}, g_s, state_{s-1}); arrays (P,) of one
    dtype (the scalars are cast to it). The input state is not modified; plain SGD writes
    into ``out`` when given (``sgd_step``'s ``out``, e.g. w itself), the others return new
    arrays."""
    if opt.kind is ClientOpt.SGD:
        return sgd_step(w, g, lr, out=out), state
    if w.shape != g.shape or w.dtype != g.dtype:
        raise ValueError(f"client_opt_step: params {w.shape} {w.dtype} and grad "
                         f"{g.shape} {g.dtype} differ")
    f = w.dtype.type
    s = int(state["step"]) + 1
    if opt.kind is ClientOpt.MOMENTUM:
        buf = g.copy() if s == 1 else f(opt.momentum) * state["momentum_buffer"] + g  # (P,)
        return w - f(lr) * buf, {"step": np.int64(s), "momentum_buffer": buf}
    if opt.kind is ClientOpt.ADAM_TFF:
        w, a, p = tff_adam_step(w, g, state["accumulator"], state["preconditioner"], lr,
                                opt.beta1, opt.beta2, opt.eps, s)
        return w, {"step": np.int64(s), "accumulator": a, "preconditioner": p}
    xp = get_xp(w)
    m = state["exp_avg"] + f(1.0 - opt.beta1) * (g - state["exp_avg"])  # (P,)
    v = f(opt.beta2) * state["exp_avg_sq"] + f(1.0 - opt.beta2) * (g * g)  # (P,)
    step_size = lr / (1.0 - opt.beta1 ** s)
    denom = xp.sqrt(v) / f((1.0 - opt.beta2 ** s) ** 0.5) + f(opt.eps)  # (P,)
    return w - f(step_size) * (m / denom), {"step": np.int64(s), "exp_avg": m, "exp_avg_sq": v}


# -- KEEP: client states held beside the server state ------------------------------------------

def split_client_states(state: dict) -> tuple[dict, dict[int, dict]]:
    """(server state, {k: client k's optimizer state}) of a run state whose client arrays are
    keyed ``client<k>.<name>``."""
    server, clients = {}, {}
    for key, value in state.items():
        head, dot, name = key.partition(".")
        if dot and head.startswith(CLIENT_STATE_PREFIX) and head[len(CLIENT_STATE_PREFIX):].isdigit():
            clients.setdefault(int(head[len(CLIENT_STATE_PREFIX):]), {})[name] = value
        else:
            server[key] = value
    return server, clients


def join_client_states(server: dict, clients: dict[int, dict]) -> dict:
    """The inverse of :func:`split_client_states` (clients in ascending id).

    >>> s = join_client_states({"v": 1}, {3: {"step": 2}})
    >>> s, split_client_states(s)
    ({'v': 1, 'client3.step': 2}, ({'v': 1}, {3: {'step': 2}}))
    """
    out = dict(server)
    for k in sorted(clients):
        out.update({f"{CLIENT_STATE_PREFIX}{k}.{name}": v for name, v in clients[k].items()})
    return out


def client_state_like(opt: ClientOptConfig, params, clients) -> dict:
    """The run-state arrays a checkpoint must hold for kept states of ``clients`` (ids): those
    of :func:`init_client_state` under ``client<k>.`` keys (a resumed run checks against it)."""
    return join_client_states({}, {int(k): init_client_state(opt, params) for k in clients})
