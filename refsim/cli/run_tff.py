"""The TFF side of ``refsim run``: the settings that choose TFF's semantics (the server
optimizer's, ``--server-semantics``; TFF's robust aggregator, ``--aggregator tff-robust`` and
its norms; TFF's compression aggregator, ``--codec tff-compression``) and the per-round line in
the TFF tutorials' terms (``--progress tff``, :func:`tff_round_line`). ``run_settings.py``
merges the settings into its defaults, checks and flags; ``run.py`` prints the lines.

Every default is TFF 0.87's (``refsim.fedavg.robust``, ``ServerOptConfig.tff_*``); the
semantics are in ``docs/tff-semantics.md``.
"""

from __future__ import annotations

import dataclasses

from refsim.cli._common import UsageError
from refsim.fedavg import ServerOpt, ServerOptConfig, ServerSemantics
from refsim.fedavg.robust import (TFF_CLIPPING, TFF_ZEROING, AdaptiveNorm, RobustAggregator)

__all__ = ["TFF_RUN_DEFAULTS", "AGGREGATORS", "PROGRESS", "TFF_CODEC", "check_tff_settings",
           "server_config", "aggregator_config", "add_tff_arguments", "format_size",
           "tff_round_line"]

AGGREGATORS = ("mean", "tff-robust")
PROGRESS = ("refsim", "tff")
TFF_CODEC = "tff-compression"  # an uplink codec name: TFF's compression_aggregator
_NORM_FIELDS = ("initial", "quantile", "lr", "multiplier", "increment")

TFF_RUN_DEFAULTS = {
    "server_semantics": "flower", "server_initial_preconditioner": None,
    "aggregator": "mean", "progress": "refsim",
    "zeroing": True, "zeroing_initial": TFF_ZEROING.initial,
    "zeroing_quantile": TFF_ZEROING.target_quantile, "zeroing_lr": TFF_ZEROING.learning_rate,
    "zeroing_multiplier": TFF_ZEROING.multiplier, "zeroing_increment": TFF_ZEROING.increment,
    "clipping": True, "clipping_initial": TFF_CLIPPING.initial,
    "clipping_quantile": TFF_CLIPPING.target_quantile, "clipping_lr": TFF_CLIPPING.learning_rate,
    "clipping_multiplier": TFF_CLIPPING.multiplier, "clipping_increment": TFF_CLIPPING.increment,
}
# TFF's builder per optimizer (the hyperparameters left unset take its defaults).
_TFF_BUILDERS = {ServerOpt.ADAM: ServerOptConfig.tff_adam, ServerOpt.YOGI: ServerOptConfig.tff_yogi,
                 ServerOpt.ADAGRAD: ServerOptConfig.tff_adagrad}


def check_tff_settings(s: dict) -> None:
    """UsageError for a bad choice among these settings (numbers are checked by the config)."""
    for key, allowed in (("server_semantics", tuple(m.value for m in ServerSemantics)),
                         ("aggregator", AGGREGATORS), ("progress", PROGRESS)):
        if s[key] not in allowed:
            raise UsageError(f"--{key.replace('_', '-')}: {s[key]!r} is not one of "
                             f"{', '.join(allowed)}")
    for key in ("zeroing", "clipping"):
        if not isinstance(s[key], bool):
            raise UsageError(f"{key}: must be true or false, got {s[key]!r}")


def server_config(s: dict) -> ServerOptConfig:
    """The server optimizer of the settings. beta1 / beta2 / tau / initial_preconditioner left
    unset (None) take the default of the optimizer under the chosen semantics: Flower's
    (beta1 0.9, beta2 0.99, tau 1e-9) or TFF's builder's (``ServerOptConfig.tff_*``).
    Raises ValueError / TypeError naming the field (``make_config`` names the flag)."""
    kind = ServerOpt(s["server_opt"])
    given = {k: s[f"server_{k}"] for k in ("beta1", "beta2", "tau", "initial_preconditioner")
             if s[f"server_{k}"] is not None}
    if s["server_semantics"] == ServerSemantics.FLOWER.value:
        return ServerOptConfig(kind, s["server_lr"], s["server_momentum"],
                               bias_correction=s["server_bias_correction"], **given)
    if kind in _TFF_BUILDERS:
        base = _TFF_BUILDERS[kind](s["server_lr"])
    else:
        base = ServerOptConfig(kind, s["server_lr"], semantics=ServerSemantics.TFF)
    return dataclasses.replace(base, momentum=s["server_momentum"],
                               bias_correction=s["server_bias_correction"], **given)


def _norm(s: dict, stage: str) -> AdaptiveNorm | None:
    if not s[stage]:
        return None
    values = [s[f"{stage}_{f}"] for f in _NORM_FIELDS]
    try:
        return AdaptiveNorm(*values)
    except (TypeError, ValueError) as e:
        field = dict(zip(("initial", "target_quantile", "learning_rate", "multiplier",
                          "increment"), _NORM_FIELDS))[str(e).split(" ")[0]]
        raise UsageError(f"--{stage}-{field}: {e}") from None


def aggregator_config(s: dict, codec_kind: str) -> RobustAggregator | None:
    """None (the weighted mean), TFF's robust aggregator (``--aggregator tff-robust``), or its
    compression aggregator (``--codec tff-compression``, whatever ``--aggregator`` says)."""
    if s["aggregator"] == "mean" and codec_kind != TFF_CODEC:
        return None
    zeroing, clipping = _norm(s, "zeroing"), _norm(s, "clipping")
    if codec_kind == TFF_CODEC:
        return RobustAggregator.tff_compression(zeroing, clipping)
    return RobustAggregator(zeroing, clipping)


def add_tff_arguments(add, suppress) -> None:
    """The flags (``add`` = the parser's add_argument; all absent unless given)."""
    S = suppress
    add("--server-semantics", default=S, choices=[m.value for m in ServerSemantics],
        help="whose server optimizer formulas: flower (default) or tff (docs/tff-semantics.md)")
    add("--server-initial-preconditioner", default=S, type=float,
        help="tff yogi / adagrad: the preconditioner's start (TFF: 1e-6 / 0.1)")
    add("--aggregator", default=S, choices=AGGREGATORS,
        help="mean (default) or tff-robust: TFF's adaptive zeroing, then clipping, then the mean")
    add("--progress", default=S, choices=PROGRESS,
        help="per-round lines: refsim (default) or tff (the TFF tutorials' terms)")
    for stage, d in (("zeroing", TFF_ZEROING), ("clipping", TFF_CLIPPING)):
        add(f"--no-{stage}", dest=stage, default=S, action="store_false",
            help=f"tff-robust / tff-compression without the {stage} stage")
        add(f"--{stage}-initial", default=S, type=float, help=f"{stage}: C_0 ({d.initial:g})")
        add(f"--{stage}-quantile", default=S, type=float,
            help=f"{stage}: target quantile ({d.target_quantile:g})")
        add(f"--{stage}-lr", default=S, type=float,
            help=f"{stage}: learning rate of the estimate ({d.learning_rate:.6g})")
        add(f"--{stage}-multiplier", default=S, type=float,
            help=f"{stage}: bound = multiplier * C + increment ({d.multiplier:g})")
        add(f"--{stage}-increment", default=S, type=float, help=f"{stage}: ({d.increment:g})")


def format_size(bits: float) -> str:
    """Bits as the TFF compression tutorial's ``format_size`` prints them (binary prefixes).

    >>> format_size(532_278_400), format_size(153_575_360), format_size(1_064_556_800 * 2)
    ('507.62Mibit', '146.46Mibit', '1.98Gibit')
    """
    size = float(bits)
    for unit in ("bit", "Kibit", "Mibit", "Gibit"):
        if size < 1024.0:
            return f"{size:3.2f}{unit}"
        size /= 1024.0
    return f"{size:.2f}Tibit"


def tff_round_line(row, epochs: int, aggregated_bits_cum: int) -> str:
    """Round t in the TFF tutorials' terms (``train_metrics`` of ``build_weighted_fed_avg`` and
    the compression tutorial's cumulative bits). TFF's ``num_examples`` counts the examples
    processed, E * n_k per client (refsim's ``examples`` is sum n_k); ``num_batches`` is
    refsim's ``batches``; ``broadcasted_bits`` the raw weights sent to the m clients;
    ``aggregated_bits`` the cumulative uplink in TFF's count (``tff_uplink_bits`` where it is
    defined, else refsim's exact bits). Rounds are refsim's t = 1, 2, ... (the compression
    tutorial prints round_num from 0)."""
    metrics = (f"OrderedDict([('sparse_categorical_accuracy', {row.train_accuracy:.7g}), "
               f"('loss', {row.train_loss:.7g}), ('num_examples', {epochs * row.examples}), "
               f"('num_batches', {row.batches})])")
    return (f"round {row.round:2d}, train_metrics={metrics}, "
            f"broadcasted_bits={format_size(row.broadcast_bits_cum)}, "
            f"aggregated_bits={format_size(aggregated_bits_cum)}")
