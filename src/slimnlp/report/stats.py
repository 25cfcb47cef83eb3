"""Seed statistics: mean ± sample std, the 95% interval of a difference, the Pareto front.

Differences between two rows use **Welch's t-interval** (unequal variances, Welch–Satterthwaite degrees of
freedom; ``scipy.stats.ttest_ind(equal_var=False).confidence_interval``), not a bootstrap: with the 3–5
seeds a compression study can afford, a bootstrap over seeds has only a handful of distinct resamples and
its percentile interval is too narrow (it calls noise a win), while the t-interval widens honestly with
small n. A difference is a win or a loss only when its interval excludes 0; otherwise "n.s.". With fewer
than two values on either side there is no interval ("n/a"): one seed says nothing about seed noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
# Metrics where less is better (costs, divergence, attack success); everything else: more is better.
LOWER_IS_BETTER = (
    "eff/latency",
    "eff/ort/latency",
    "eff/flops",
    "eff/params",
    "eff/nonzero_params",
    "eff/disk_bytes",
    "eff/peak_mem",
    "energy/",
    "fidelity/kl",
    "time/",
)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; NaN when n < 2) and count of one metric over seeds."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± sample std (ddof=1) of the finite ``values``."""
    array = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if array.size == 0:
        return Summary(math.nan, math.nan, 0)
    if array.size == 1:
        std = math.nan
    elif np.ptp(array) == 0:  # identical values: exactly 0, not the 1e-16 that rounding leaves
        std = 0.0
    else:
        std = float(np.std(array, ddof=1))
    return Summary(float(np.mean(array)), std, int(array.size))


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is an improvement (accuracy yes, latency no)."""
    name = metric.removeprefix("teacher/")
    if name.startswith("robust/") and name.endswith("success_rate"):
        return False
    return not name.startswith(LOWER_IS_BETTER)


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its Welch interval and the verdict ("win", "loss", "n.s.", "n/a")."""

    diff: float
    low: float
    high: float
    verdict: str


def welch_difference(
    a: Sequence[float], b: Sequence[float], higher_better: bool = True, confidence: float = CONFIDENCE
) -> Difference:
    """The difference of means of ``a`` and ``b`` with a Welch t-interval. "win" when the interval lies
    entirely on the better side of 0 (above for ``higher_better``), "loss" entirely on the worse side."""
    a = [v for v in a if math.isfinite(v)]
    b = [v for v in b if math.isfinite(v)]
    if not a or not b:
        return Difference(math.nan, math.nan, math.nan, "n/a")
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, math.nan, math.nan, "n/a")
    if np.var(a) == 0 and np.var(b) == 0:  # no seed spread at all: the t-interval is undefined
        return Difference(diff, math.nan, math.nan, "n/a")
    with (
        warnings.catch_warnings()
    ):  # one side constant (a teacher measured n times): scipy warns, result fine
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = sps.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    low, high = float(interval.low), float(interval.high)
    if low > 0:
        verdict = "win" if higher_better else "loss"
    elif high < 0:
        verdict = "loss" if higher_better else "win"
    else:
        verdict = "n.s."
    return Difference(diff, low, high, verdict)


def pareto_front(costs: Sequence[float], values: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (cost no higher and value no lower, one strictly), in
    order of increasing cost. Of identical points the first is kept. NaN points are never on the front."""
    order = sorted(
        (i for i in range(len(costs)) if math.isfinite(costs[i]) and math.isfinite(values[i])),
        key=lambda i: (costs[i], -values[i], i),
    )
    front: list[int] = []
    best = -math.inf
    for i in order:
        if values[i] > best:
            front.append(i)
            best = values[i]
    return front
