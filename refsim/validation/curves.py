"""Compare a candidate's test-accuracy curve with refsim's seed-to-seed band: the library behind
``refsim compare --curves``.

Whole float32 trajectories of two correct implementations part after a few dozen steps
(``docs/validation.md``), so a researcher's last word on a port is statistical: does the
candidate's accuracy curve, run by run, look like one more draw of refsim's? Given refsim's
curves a_s(t) for n >= 3 seeds s (the same run, only the seed changed) and the candidate's
c(t), over the R rounds t that all of them evaluated:

    mean(t) = (1/n) sum_s a_s(t),   sd(t) = sqrt(sum_s (a_s(t) - mean(t))^2 / (n - 1))
    band(t) = mean(t) +- max(q * sd(t) * sqrt(1 + 1/n), resolution)
    q = t_{n-1}(1 - alpha / (2 R))  (Student's t quantile, scipy.stats.t.ppf)

band(t) is the two-sided prediction interval at level 1 - alpha/R for one more independent
run at round t, if accuracies across seeds are normal (Bonferroni over the R rounds: a correct
candidate falls outside in *some* round with probability at most about alpha); ``resolution``
(one test example, 1 / num_test) keeps the band from collapsing where all seeds agree. The
candidate is **inside** when c(t) lies in band(t) for every compared round.

Curve files: a CSV with a header naming ``round`` and ``test_accuracy`` (or ``accuracy``)
columns, such as refsim's own ``metrics.csv``; rows with an empty accuracy are skipped.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["ALPHA", "Curve", "BandRow", "CurveComparison", "read_curve", "compare_curve"]

ALPHA = 0.05


@dataclass(frozen=True)
class Curve:
    """Test accuracy by round (ascending rounds)."""
    label: str
    rounds: tuple[int, ...]
    accuracy: tuple[float, ...]

    def at(self) -> dict[int, float]:
        return dict(zip(self.rounds, self.accuracy))


@dataclass(frozen=True)
class BandRow:
    """One compared round: the candidate's accuracy and refsim's band there."""
    round: int
    candidate: float
    mean: float
    sd: float
    low: float
    high: float
    seeds_min: float
    seeds_max: float

    @property
    def inside(self) -> bool:
        return self.low <= self.candidate <= self.high


@dataclass(frozen=True)
class CurveComparison:
    """The candidate against n reference curves (module docstring)."""
    candidate: Curve
    references: tuple[Curve, ...]
    alpha: float
    quantile: float
    resolution: float
    rows: tuple[BandRow, ...]

    @property
    def inside(self) -> bool:
        return all(r.inside for r in self.rows)

    @property
    def outside_rounds(self) -> tuple[int, ...]:
        return tuple(r.round for r in self.rows if not r.inside)

    def to_dict(self) -> dict:
        return {"candidate": self.candidate.label,
                "references": [c.label for c in self.references], "alpha": self.alpha,
                "quantile": self.quantile, "resolution": self.resolution,
                "verdict": "inside" if self.inside else "outside",
                "outside_rounds": list(self.outside_rounds),
                "rounds": [dict(vars(r), inside=r.inside) for r in self.rows]}


def read_curve(path: str | os.PathLike, label: str | None = None) -> Curve:
    """Read a curve file (module docstring); ValueError names what is wrong with it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.csv")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (a CSV with round and test_accuracy columns, "
                         f"or a refsim run directory)")
    with open(path, newline="", encoding="utf-8") as f:
        try:
            rows = list(csv.DictReader(f))
        except (csv.Error, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a readable CSV ({error})") from None
    if not rows:
        raise ValueError(f"{path}: no rows under a header")
    column = next((c for c in ("test_accuracy", "accuracy") if c in rows[0]), None)
    if "round" not in rows[0] or column is None:
        raise ValueError(f"{path}: its header {list(rows[0])} lacks 'round' and "
                         f"'test_accuracy' (or 'accuracy')")
    points = {}
    for i, row in enumerate(rows, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            continue
        try:
            t, acc = int(row["round"]), float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {i}: round {row.get('round')!r} and accuracy "
                             f"{value!r} must be an integer and a number") from None
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"{path}, line {i}: accuracy {acc} is not in [0, 1]")
        if t in points:
            raise ValueError(f"{path}: round {t} appears twice")
        points[t] = acc
    if not points:
        raise ValueError(f"{path}: no round has a test accuracy")
    rounds = tuple(sorted(points))
    return Curve(label or path, rounds, tuple(points[t] for t in rounds))


def compare_curve(candidate: Curve, references: list[Curve], num_test: int,
                  alpha: float = ALPHA) -> CurveComparison:
    """The band of ``references`` (n >= 3 seeds) round by round, and where ``candidate`` is.

    num_test : the size of the test set the accuracies are measured on (the resolution is
    1 / num_test).
    """
    if len(references) < 3:
        raise ValueError(f"a seed band needs at least 3 reference runs, got {len(references)}")
    if not 0 < alpha < 1 or num_test < 1:
        raise ValueError(f"alpha must be in (0, 1) and num_test >= 1, got {alpha}, {num_test}")
    common = set(candidate.rounds)
    for ref in references:
        common &= set(ref.rounds)
    if not common:
        raise ValueError(f"{candidate.label} shares no evaluated round with the reference runs")
    rounds = sorted(common)
    n, R = len(references), len(rounds)
    q = float(stats.t.ppf(1 - alpha / (2 * R), n - 1))
    resolution = 1.0 / num_test
    cand, refs = candidate.at(), [r.at() for r in references]
    rows = []
    for t in rounds:
        values = np.array([r[t] for r in refs])  # (n,)
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        half = max(q * sd * math.sqrt(1 + 1 / n), resolution)
        rows.append(BandRow(t, cand[t], mean, sd, mean - half, mean + half,
                            float(values.min()), float(values.max())))
    return CurveComparison(candidate, tuple(references), alpha, q, resolution, tuple(rows))
