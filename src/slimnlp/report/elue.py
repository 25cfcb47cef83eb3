"""ELUE-style score (Liu et al., "Towards Efficient NLP: A Standard Evaluation and A Strong Baseline",
NAACL 2022; the ELUE leaderboard).

ELUE scores a model by how far it lies above the performance–FLOPs curve of a baseline. For a submission
with points ``(p_i, f_i), i = 1..n`` (a static model has one point; a dynamic, early-exiting one several)::

    ELUE_score = 1/n * sum_i [ p_i - p_EB(f_i) ]

where ``p_EB(f)`` is the curve obtained by interpolating the coordinates of ElasticBERT-BASE (its 1..12-layer
truncations, each fine-tuned). Positive: above the baseline curve at equal FLOPs.

Here the baseline curve is the rows chosen with ``--elue-baseline`` (e.g. ``technique=finetune``: the
teacher truncated to k layers and fine-tuned, which is what ElasticBERT's curve is), one point per row:
(mean ``eff/flops``, mean primary metric over its seeds); rows at the same FLOPs are averaged. Each row's
points are its runs (one per seed), so its score is the mean over seeds of ``p_seed - p_EB(f_seed)``.

- **Interpolation:** piecewise linear in FLOPs (``numpy.interp``) between the baseline points. The sources
  found (the ELUE site and the CELUE task description) say "interpolating the coordinates" and draw
  straight segments; they state no other kind.
- **Outside the baseline's FLOPs range:** no score ("–" in the table, the reason in the notes). The sources
  found state no rule for points beyond the curve's ends (on ELUE the 1..12-layer curve spans the models
  compared); extrapolating or clamping would invent the baseline there, so a point outside
  ``[min f, max f]`` is not scored and a row is scored on its points inside the range.
- **Units:** the primary metric's own (accuracy 0..1, so 0.01 = one ELUE point of the paper's percent
  scale).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slimnlp.report.errors import ReportError


@dataclass(frozen=True)
class Curve:
    """The baseline's performance–FLOPs points, sorted by FLOPs (distinct FLOPs)."""

    flops: tuple[float, ...]
    perf: tuple[float, ...]

    def at(self, flops: float) -> float:
        """``p_EB(flops)``: linear interpolation; NaN outside the curve's FLOPs range."""
        if not math.isfinite(flops) or flops < self.flops[0] or flops > self.flops[-1]:
            return math.nan
        return float(np.interp(flops, self.flops, self.perf))


def baseline_curve(points: Sequence[tuple[float, float]], what: str = "the ELUE baseline") -> Curve:
    """The curve through ``(flops, perf)`` points (equal FLOPs averaged). Needs two distinct FLOPs."""
    by_flops: dict[float, list[float]] = defaultdict(list)
    for flops, perf in points:
        if math.isfinite(flops) and math.isfinite(perf):
            by_flops[flops].append(perf)
    if len(by_flops) < 2:
        raise ReportError(
            f"{what} needs at least 2 rows with different eff/flops and a primary metric to draw a curve "
            f"through; it has {len(by_flops)}"
        )
    xs = sorted(by_flops)
    return Curve(tuple(xs), tuple(float(np.mean(by_flops[x])) for x in xs))


@dataclass(frozen=True)
class EluePoint:
    """A row's ELUE score: the mean of ``p_i - p_EB(f_i)`` over its points inside the curve's range."""

    score: float
    n_scored: int
    n_outside: int


def elue_score(points: Sequence[tuple[float, float]], curve: Curve) -> EluePoint:
    """Score the ``(flops, perf)`` points of one row against ``curve``."""
    gaps, outside = [], 0
    for flops, perf in points:
        if not (math.isfinite(flops) and math.isfinite(perf)):
            continue
        reference = curve.at(flops)
        if math.isnan(reference):
            outside += 1
        else:
            gaps.append(perf - reference)
    return EluePoint(float(np.mean(gaps)) if gaps else math.nan, len(gaps), outside)
