"""Readable units: what a column's numbers are divided by, and how many decimals they get.

The table shows parameters in millions (M), FLOPs in GFLOPs (10^9 per example), disk size in MB (10^6
bytes), energy in Wh and CO2 in g; latencies stay in ms (one forward pass of the whole batch), memory in MB. The CSV keeps the raw
values of ``results.json`` (counts, FLOPs, bytes) so a script reading it needs no unit table.
"""

from __future__ import annotations

import math

from slimnlp.report.stats import Summary

SCALED = {
    "eff/params": (1e-6, "M"),
    "eff/params_nonembedding": (1e-6, "M"),
    "eff/nonzero_params": (1e-6, "M"),
    "eff/flops": (1e-9, "GFLOPs"),
    "eff/disk_bytes": (1e-6, "MB"),
}


def unit(metric: str) -> tuple[float, str]:
    """``(scale, unit)`` of ``metric``'s display: shown value = raw value * scale."""
    name = metric.removeprefix("teacher/")
    if name in SCALED:
        return SCALED[name]
    if "latency_ms" in name:
        return 1.0, "ms"
    if name.endswith("_mb"):
        return 1.0, "MB"
    if "speedup" in name or "compression" in name:
        return 1.0, "×"
    if name.endswith("_kwh") or "kwh_per" in name:
        return 1e3, "Wh"  # a fine-tuning run on a CPU is about a watt-hour, not a kilowatt-hour
    if name.endswith("co2_kg"):
        return 1e3, "g CO2"
    return 1.0, ""


def header(metric: str) -> str:
    """Column header with its unit: ``eff/params (M)``."""
    _, name = unit(metric)
    return f"{metric} ({name})" if name else metric


def decimals(value: float) -> int:
    """Four decimals for fractions (accuracies), fewer as numbers grow: 0.8123, 3.142, 22.71, 412.3."""
    size = abs(value)
    if size < 1:
        return 4
    if size < 10:
        return 3
    if size < 100:
        return 2
    if size < 10_000:
        return 1
    return 0


def number(value: float, places: int | None = None, sign: bool = False) -> str:
    """``value`` with ``places`` decimals (default: by size); NaN -> "–"."""
    if not math.isfinite(value):
        return "–"
    places = decimals(value) if places is None else places
    value = round(value, places) + 0.0  # no "-0.0000" for a difference that rounds to zero
    return f"{value:+.{places}f}" if sign else f"{value:.{places}f}"


def cell(summary: Summary | None, metric: str, row_n: int) -> str:
    """``mean ± std`` in display units; no ± for n=1 or when every seed gave the same value (parameter
    counts, FLOPs, size: "± 0" would be clutter); ``(n=k)`` when fewer seeds than the row has the metric."""
    if summary is None or summary.n == 0:
        return "–"
    scale, _ = unit(metric)
    mean = summary.mean * scale
    places = decimals(mean)
    text = number(mean, places)
    if summary.n > 1 and math.isfinite(summary.std) and summary.std > 0:
        text += f" ± {number(summary.std * scale, places)}"
    if row_n and summary.n != row_n:
        text += f" (n={summary.n})"
    return text
