"""Accuracy-vs-cost plots (PNG, matplotlib Agg): one per cost axis and task.

Each point is a row (mean over seeds, error bars ± std over seeds in both directions); the teacher is a
star, labelled; the Pareto front (no other point is both cheaper and better) is a step line: reading it
left to right gives the best primary metric reachable at each cost. Paper rows are not drawn: their cost was
measured on other hardware, or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from slimnlp.report.rows import Row
from slimnlp.report.stats import pareto_front


@dataclass(frozen=True)
class Axis:
    """A cost axis: the file stem, the metric, the display scale and the label with units."""

    stem: str
    metric: str
    scale: float
    label: str
    title: str


AXES = (
    Axis(
        "latency_b1",
        "eff/latency_ms_b1",
        1.0,
        "latency, batch of 1 (ms per forward pass, median; lower is better)",
        "latency at batch 1",
    ),
    Axis(
        "latency_b32",
        "eff/latency_ms_b32",
        1.0,
        "latency, batch of 32 (ms per forward pass, median; lower is better)",
        "latency at batch 32",
    ),
    Axis("bytes", "eff/disk_bytes", 1e-6, "size on disk (MB = 10^6 bytes; lower is better)", "size on disk"),
    Axis("flops", "eff/flops", 1e-9, "forward FLOPs per example (GFLOPs; lower is better)", "FLOPs"),
)


def _std(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def plot_tradeoff(
    rows: Sequence[Row], axis: Axis, metric: str, task: str, path: Path, machine: str = ""
) -> bool:
    """Draw ``metric`` against ``axis`` for the measured ``rows`` of ``task`` into ``path``. False (and no
    file) when fewer than one row has both numbers."""
    points = []
    for row in rows:
        if row.kind == "paper" or row.task != task:
            continue
        x, y = row.summary(axis.metric), row.summary(metric)
        if x and y and math.isfinite(x.mean) and math.isfinite(y.mean):
            points.append((row, x.mean * axis.scale, _std(x.std) * axis.scale, y.mean, _std(y.std)))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(8.5, 6), dpi=120)
    students = [p for p in points if p[0].kind == "run"]
    teachers = [p for p in points if p[0].kind == "teacher"]
    if students:
        ax.errorbar(
            [p[1] for p in students],
            [p[3] for p in students],
            xerr=[p[2] for p in students],
            yerr=[p[4] for p in students],
            fmt="o",
            color="tab:blue",
            ecolor="tab:blue",
            alpha=0.85,
            capsize=3,
            markersize=6,
            label="student configuration (mean ± std over seeds)",
        )
    for row, x, xs, y, ys in teachers:
        ax.errorbar([x], [y], xerr=[xs], yerr=[ys], fmt="none", ecolor="black", capsize=3)
        ax.scatter(
            [x],
            [y],
            marker="*",
            s=320,
            color="gold",
            edgecolor="black",
            linewidth=0.8,
            zorder=5,
            label=row.label,
        )
    front = pareto_front([p[1] for p in points], [p[3] for p in points])
    if front:
        xs_front = [points[i][1] for i in front]
        ys_front = [points[i][3] for i in front]
        ax.step(
            xs_front,
            ys_front,
            where="post",
            color="tab:red",
            linewidth=1.6,
            alpha=0.8,
            zorder=1,
            label="Pareto front (higher metric, lower cost)",
        )
        ax.scatter(
            xs_front, ys_front, s=110, facecolors="none", edgecolors="tab:red", linewidths=1.2, zorder=4
        )
    for row, x, _, y, _ in points:
        ax.annotate(
            row.label,
            (x, y),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
            fontweight="bold" if row.kind == "teacher" else "normal",
        )
    xs_all = [p[1] for p in points if p[1] > 0]
    if xs_all and max(xs_all) / min(xs_all) > 30:
        ax.set_xscale("log")
    ax.set_xlabel(axis.label)
    ax.set_ylabel(f"{metric} (higher is better)")
    ax.set_title(
        f"{task}: {metric} vs {axis.title}\n"
        "points: mean over seeds, bars: ± std over seeds; ★ teacher; red steps and rings: Pareto front",
        fontsize=10,
    )
    ax.margins(x=0.15, y=0.08)  # room for the labels right of the rightmost points
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if machine:
        fig.text(0.01, 0.01, f"measured on {machine}", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_all(
    rows: Sequence[Row], primary: dict[str, str], out: Path, machine: str = ""
) -> tuple[list[Path], list[str]]:
    """Every plot for every task: ``<metric>_vs_<axis>.png`` (``_<task>`` added when several tasks).
    Returns the files written and one line per plot that could not be drawn."""
    written, skipped = [], []
    tasks = sorted(primary)
    for task in tasks:
        metric = primary[task]
        short = metric.rsplit("/", 1)[-1]
        for axis in AXES:
            suffix = f"_{task}" if len(tasks) > 1 else ""
            path = out / f"{short}_vs_{axis.stem}{suffix}.png"
            if plot_tradeoff(rows, axis, metric, task, path, machine):
                written.append(path)
            else:
                skipped.append(f"{path.name} (no row of {task} has both {axis.metric} and {metric})")
    return written, skipped
