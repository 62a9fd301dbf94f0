"""The frozen, validated configuration of a FederatedAveraging run.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, arXiv:1602.05629, Algorithm 1. The paper's hyperparameters map to fields as

    C  -> ``fraction``      (m = max(floor(C * K), 1) clients per round; C = 0 means one client)
    E  -> ``epochs``        local epochs
    B  -> ``batch_size``    local minibatch size; None is the paper's B = infinity (whole client)
    eta -> ``lr``           client learning rate (optionally decayed per round, ``lr_decay``)

K (the number of clients) is not a field: it is the length of the partition the run is given.
The server step is ``w <- w - server_opt(-mean delta)``; :class:`ServerOptConfig` with
``ServerOpt.SGD`` and ``lr=1.0`` is exactly FedAvg; its ``semantics`` picks Flower's formulas
(the default, ``server.py``) or TFF's (``server_tff.py``). ``client_opt`` replaces the clients'
plain SGD by momentum or Adam (``client_opt.py``). ``aggregator`` replaces the weighted
mean by TFF's robust (or compression) aggregator (``robust.py``). Everything is validated once, in
``__post_init__``; errors name the field and its allowed range.
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from refsim.compress import Codec
from refsim.fedavg.client_opt import ClientOpt, ClientOptConfig
from refsim.fedavg.robust import RobustAggregator

__all__ = ["Weighting", "NanPolicy", "DType", "InitScheme", "ServerOpt", "ServerSemantics",
           "ServerOptConfig",
           "FedAvgConfig", "clients_per_round", "check_int"]

BACKENDS = ("numpy", "cupy")  # FedAvgConfig.backend; availability is checked by the loop


class Weighting(enum.Enum):
    """How client updates are weighted in the server average.

    EXAMPLES  weight n_k = number of training examples of client k (the paper; TFF's
              ``build_weighted_fed_avg``; Flower's ``FedAvg``).
    UNIFORM   weight 1 per reporting client (TFF's ``build_unweighted_fed_avg``).
    """
    EXAMPLES = "examples"
    UNIFORM = "uniform"


class NanPolicy(enum.Enum):
    """What happens to a client update containing NaN or Inf (never averaged in silently).

    RAISE  the round fails with :class:`refsim.fedavg.client.NonFiniteUpdateError` naming the
           round and the client (the default).
    DROP   the client is left out of the average and recorded in the round's ``dropped`` list.
    """
    RAISE = "raise"
    DROP = "drop"


class DType(enum.Enum):
    """Float type of parameters, data and updates (float64 for oracle-grade runs)."""
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.value)


class InitScheme(enum.Enum):
    """``Model.init`` scheme: KERAS (glorot_uniform, zero bias), TORCH (PyTorch defaults) or
    ZEROS (every weight 0: ``kernel_initializer='zeros'`` of TFF's image-classification
    tutorial)."""
    KERAS = "keras"
    TORCH = "torch"
    ZEROS = "zeros"


class ServerOpt(enum.Enum):
    """The server optimizer applied to the pseudo-gradient g = -mean delta.

    SGD       w <- w - lr * g                               (lr = 1: FedAvg)
    MOMENTUM  v <- momentum * v + g;  w <- w - lr * v       (FedAvgM, Hsu et al. 2019,
                                                             arXiv:1909.06335; Flower FedAvgM)
    ADAM, YOGI, ADAGRAD   FedAdam / FedYogi / FedAdagrad (Reddi et al., ICLR 2021,
              arXiv:2003.00295, Algorithm 2) on Delta = -g; formulas in ``server.py``.
    """
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
    YOGI = "yogi"
    ADAGRAD = "adagrad"


class ServerSemantics(enum.Enum):
    """Whose formulas a :class:`ServerOptConfig` follows (they differ: ``docs/tff-semantics.md``).

    FLOWER  Flower 1.42's ``FedAvgM`` / ``FedAdam`` / ``FedYogi`` / ``FedAdagrad`` (``server.py``).
    TFF     TFF 0.87's ``build_sgdm`` / ``build_adam`` / ``build_yogi`` / ``build_adagrad``
            (``server_tff.py``): bias correction with step t, Yogi's and Adagrad's initial
            preconditioner, Adagrad's epsilon inside the square root, float32 hyperparameters.
    """
    FLOWER = "flower"
    TFF = "tff"


def _check_real(name: str, value: object, lo: float, hi: float, lo_open: bool = False,
                hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    bad = (not math.isfinite(v) or (v <= lo if lo_open else v < lo)
           or (v >= hi if hi_open else v > hi))
    if bad:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    return v


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """``value`` as an int; TypeError unless an integer, ValueError outside [lo, hi] (hi None:
    no upper bound). The one integer check of the config, also used by ``refsim run``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


def _check_enum(name: str, value: object, cls: type) -> None:
    if not isinstance(value, cls):
        allowed = ", ".join(f"{cls.__name__}.{m.name}" for m in cls)
        raise TypeError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class ServerOptConfig:
    """Server optimizer and its hyperparameters (see ``server.py`` for the formulas).

    kind; lr in (0, inf) (Reddi et al.'s eta); momentum in [0, 1) (MOMENTUM only);
    beta1, beta2 in [0, 1) and tau in (0, inf) (ADAM / YOGI / ADAGRAD; ADAGRAD uses beta1 only);
    bias_correction (ADAM only): scale lr as Flower's ``FedAdam`` does (off: the paper).
    The constructors :meth:`fedadam`, :meth:`fedyogi`, :meth:`fedadagrad` give the defaults of
    Flower's ``flwr.server.strategy`` classes (flwr 1.42; its Message-API classes in
    ``flwr.serverapp.strategy`` default FedAdam's and FedAdagrad's tau to 1e-3: pass
    ``tau=1e-3``). Measured against Flower in ``tests/test_validation_flower.py``.

    semantics=ServerSemantics.TFF follows TFF's optimizers instead (``server_tff.py``); tau is
    TFF's epsilon, initial_preconditioner its ``initial_preconditioner_value`` (YOGI / ADAGRAD
    only; 0 otherwise), bias_correction must be False (TFF's ADAM and YOGI always correct, with
    step t) and ADAGRAD has no moments (beta1 = beta2 = 0). :meth:`tff_sgdm`, :meth:`tff_adam`,
    :meth:`tff_yogi`, :meth:`tff_adagrad` give TFF's defaults. Measured against TFF in
    ``tests/test_validation_tff.py``; both semantics side by side: ``docs/tff-semantics.md``.
    """
    kind: ServerOpt = ServerOpt.SGD
    lr: float = 1.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-9
    bias_correction: bool = False
    semantics: ServerSemantics = ServerSemantics.FLOWER
    initial_preconditioner: float = 0.0

    def __post_init__(self):
        _check_enum("server.kind", self.kind, ServerOpt)
        _check_real("server.lr", self.lr, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_real("server.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _check_real("server.beta1", self.beta1, 0.0, 1.0, hi_open=True)
        _check_real("server.beta2", self.beta2, 0.0, 1.0, hi_open=True)
        _check_real("server.tau", self.tau, 0.0, math.inf, lo_open=True, hi_open=True)
        if not isinstance(self.bias_correction, bool):
            raise TypeError("server.bias_correction must be a bool")
        if self.kind is not ServerOpt.MOMENTUM and self.momentum != 0.0:
            raise ValueError(f"server.momentum must be 0 with ServerOpt.{self.kind.name} "
                             "(use ServerOpt.MOMENTUM for FedAvgM)")
        if self.bias_correction and self.kind is not ServerOpt.ADAM:
            raise ValueError("server.bias_correction applies to ServerOpt.ADAM only")
        _check_enum("server.semantics", self.semantics, ServerSemantics)
        _check_real("server.initial_preconditioner", self.initial_preconditioner, 0.0, math.inf,
                    hi_open=True)
        if self.semantics is ServerSemantics.TFF:
            self._check_tff()
        elif self.initial_preconditioner != 0.0:
            raise ValueError("server.initial_preconditioner applies to "
                             "semantics=ServerSemantics.TFF only (Flower starts from 0)")

    def _check_tff(self) -> None:
        if self.bias_correction:
            raise ValueError("server.bias_correction is Flower's FedAdam exponent; TFF's adam "
                             "and yogi always bias-correct with step t (leave it False)")
        if self.initial_preconditioner != 0.0 and self.kind not in (ServerOpt.YOGI,
                                                                     ServerOpt.ADAGRAD):
            raise ValueError(f"server.initial_preconditioner applies to yogi and adagrad, not "
                             f"{self.kind.value}")
        if self.kind is ServerOpt.ADAGRAD and (self.beta1, self.beta2) != (0.0, 0.0):
            raise ValueError("server.beta1 and server.beta2 must be 0 for TFF's adagrad (it has "
                             "no moments)")

    @classmethod
    def fedadam(cls, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99,
                tau: float = 1e-9, bias_correction: bool = True) -> "ServerOptConfig":
        """``flwr.server.strategy.FedAdam`` defaults (eta 0.1, beta_1 0.9, beta_2 0.99,
        tau 1e-9, Flower's bias correction); ``flwr.serverapp.strategy.FedAdam`` has tau 1e-3."""
        return cls(ServerOpt.ADAM, lr, 0.0, beta1, beta2, tau, bias_correction)

    @classmethod
    def fedyogi(cls, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99,
                tau: float = 1e-3) -> "ServerOptConfig":
        """Flower ``FedYogi`` defaults, both APIs (eta 0.01, beta_1 0.9, beta_2 0.99, tau 1e-3)."""
        return cls(ServerOpt.YOGI, lr, 0.0, beta1, beta2, tau)

    @classmethod
    def fedadagrad(cls, lr: float = 0.1, tau: float = 1e-9) -> "ServerOptConfig":
        """``flwr.server.strategy.FedAdagrad`` defaults (eta 0.1, tau 1e-9; beta_1 = beta_2 = 0,
        beta_2 unused); ``flwr.serverapp.strategy.FedAdagrad`` has tau 1e-3."""
        return cls(ServerOpt.ADAGRAD, lr, 0.0, 0.0, 0.0, tau)

    @classmethod
    def tff_sgdm(cls, lr: float = 1.0, momentum: float = 0.0) -> "ServerOptConfig":
        """TFF ``build_sgdm(learning_rate, momentum)`` (momentum 0: TFF's ``None``). lr 1.0 is
        ``build_weighted_fed_avg``'s default server optimizer; ``build_sgdm``'s own is 0.01."""
        kind = ServerOpt.MOMENTUM if momentum else ServerOpt.SGD
        return cls(kind, lr, momentum, semantics=ServerSemantics.TFF)

    @classmethod
    def tff_adam(cls, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-7) -> "ServerOptConfig":
        """TFF ``build_adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7)``."""
        return cls(ServerOpt.ADAM, lr, 0.0, beta1, beta2, epsilon,
                   semantics=ServerSemantics.TFF)

    @classmethod
    def tff_yogi(cls, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-3, initial_preconditioner: float = 1e-6
                 ) -> "ServerOptConfig":
        """TFF ``build_yogi(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-3,
        initial_preconditioner_value=1e-6)``."""
        return cls(ServerOpt.YOGI, lr, 0.0, beta1, beta2, epsilon,
                   semantics=ServerSemantics.TFF, initial_preconditioner=initial_preconditioner)

    @classmethod
    def tff_adagrad(cls, lr: float, initial_preconditioner: float = 0.1,
                    epsilon: float = 1e-7) -> "ServerOptConfig":
        """TFF ``build_adagrad(learning_rate, initial_preconditioner_value=0.1, epsilon=1e-7)``."""
        return cls(ServerOpt.ADAGRAD, lr, 0.0, 0.0, 0.0, epsilon,
                   semantics=ServerSemantics.TFF, initial_preconditioner=initial_preconditioner)


@dataclass(frozen=True)
class FedAvgConfig:
    """Hyperparameters of one FedAvg run (see the module docstring for the paper's names).

    >>> cfg = FedAvgConfig(fraction=0.1, epochs=1, batch_size=10, lr=0.1, rounds=5)
    >>> clients_per_round(cfg.fraction, 100), cfg.dtype.np
    (10, dtype('float32'))
    >>> FedAvgConfig(fraction=1.5)
    Traceback (most recent call last):
    ...
    ValueError: fraction must be in [0.0, 1.0], got 1.5
    """
    fraction: float = 0.1                 # C in [0, 1]
    epochs: int = 1                       # E >= 1
    batch_size: int | None = 10           # B >= 1, or None (whole client)
    lr: float = 0.1                       # client learning rate, > 0
    lr_decay: float = 1.0                 # round t (1-based) uses lr * lr_decay**(t - 1)
    rounds: int = 1                       # T >= 1
    weighting: Weighting = Weighting.EXAMPLES
    server: ServerOptConfig = field(default_factory=ServerOptConfig)
    codec: Codec | None = None            # uplink codec; None: raw updates
    downlink: Codec | None = None         # downlink codec of the broadcast weights; None: raw
    eval_every: int = 1                   # centralized test metrics every k rounds (and last)
    eval_holdout: float = 0.0             # fraction of each client held out for federated eval
    fraction_evaluate: float = 1.0        # share of clients in each federated evaluation
    seed: int = 0                         # in [0, 2**32)
    dtype: DType = DType.FLOAT32
    init: InitScheme = InitScheme.KERAS
    nan_policy: NanPolicy = NanPolicy.RAISE
    backend: str = "numpy"                # "numpy" or "cupy" (weights and data on the GPU)
    client_stack: int = 1                 # train up to this many equal-sized clients side by side
    client_threads: int = 1               # train up to this many clients at once, on threads
    aggregator: RobustAggregator | None = None  # None: the weighted mean; else TFF's robust one
    client_opt: ClientOptConfig = field(default_factory=ClientOptConfig)  # local steps' optimizer

    def __post_init__(self):
        _check_real("fraction", self.fraction, 0.0, 1.0)
        check_int("epochs", self.epochs, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        _check_real("lr", self.lr, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_real("lr_decay", self.lr_decay, 0.0, 1.0, lo_open=True)
        check_int("rounds", self.rounds, 1)
        _check_enum("weighting", self.weighting, Weighting)
        if not isinstance(self.server, ServerOptConfig):
            raise TypeError(f"server must be a ServerOptConfig, got {type(self.server).__name__}")
        for name in ("codec", "downlink"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Codec):
                raise TypeError(f"{name} must be a refsim.compress.Codec or None, "
                                f"got {type(value).__name__}")
        check_int("eval_every", self.eval_every, 1)
        _check_real("eval_holdout", self.eval_holdout, 0.0, 1.0, hi_open=True)
        _check_real("fraction_evaluate", self.fraction_evaluate, 0.0, 1.0, lo_open=True)
        check_int("seed", self.seed, 0, 2**32 - 1)
        _check_enum("dtype", self.dtype, DType)
        _check_enum("init", self.init, InitScheme)
        _check_enum("nan_policy", self.nan_policy, NanPolicy)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got "
                             f"{self.backend!r}")
        check_int("client_stack", self.client_stack, 1)
        check_int("client_threads", self.client_threads, 1)
        if self.client_threads > 1 and self.backend != "numpy":
            raise ValueError("client_threads > 1 trains clients on CPU threads; backend "
                             f"{self.backend} needs client_threads 1")
        if self.aggregator is not None and not isinstance(self.aggregator, RobustAggregator):
            raise TypeError(f"aggregator must be a RobustAggregator or None, got "
                            f"{type(self.aggregator).__name__}")
        if not isinstance(self.client_opt, ClientOptConfig):
            raise TypeError(f"client_opt must be a ClientOptConfig, got "
                            f"{type(self.client_opt).__name__}")
        if self.client_opt.kind is not ClientOpt.SGD and self.client_stack > 1:
            raise ValueError("client_stack > 1 trains clients side by side with plain SGD only; "
                             f"client_opt {self.client_opt.kind.value} needs client_stack 1")
        if (self.aggregator is not None and self.aggregator.codec is not None
                and self.codec is not None):
            raise ValueError("codec must be None when the aggregator compresses "
                             "(RobustAggregator.codec: TFF's compression_aggregator)")

    def client_lr(self, round_: int) -> float:
        """The client learning rate of round ``round_`` (1-based): lr * lr_decay**(round - 1)."""
        return self.lr * self.lr_decay ** (round_ - 1)

    def to_dict(self) -> dict:
        """A JSON-ready description (enums by value; the codec by its repr)."""
        out = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            if isinstance(v, enum.Enum):
                v = v.value
            elif isinstance(v, ServerOptConfig):
                v = {"kind": v.kind.value, "lr": v.lr, "momentum": v.momentum,
                     "beta1": v.beta1, "beta2": v.beta2, "tau": v.tau,
                     "bias_correction": v.bias_correction, "semantics": v.semantics.value,
                     "initial_preconditioner": v.initial_preconditioner}
            elif isinstance(v, (RobustAggregator, ClientOptConfig)):
                v = v.to_dict()
            elif isinstance(v, Codec):
                v = repr(v)
            out[name] = v
        return out


def clients_per_round(fraction: float, num_clients: int) -> int:
    """m = max(floor(C * K), 1) (Algorithm 1: "m <- max(C * K, 1)").

    floor(C * K) is computed as ``math.floor(C * K)`` in float64; e.g. C = 0.1, K = 100 gives 10.

    >>> clients_per_round(0.0, 100), clients_per_round(0.1, 100), clients_per_round(0.15, 10)
    (1, 10, 1)
    """
    k = check_int("num_clients (K)", num_clients, 1)
    return max(math.floor(fraction * k), 1)
