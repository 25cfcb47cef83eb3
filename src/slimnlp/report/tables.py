"""The table in two forms: ``report.md`` for people (readable units, mean ± std) and ``report.csv`` for
scripts (one row per configuration, ``<metric>/mean``, ``/std``, ``/n`` per metric in raw units)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from slimnlp.report.build import Report, selector_text
from slimnlp.report.rows import Row
from slimnlp.report.units import SCALED, cell, header, number, unit

KIND_MARK = {"teacher": "★ ", "run": "", "paper": ""}


def _same_primary(report: Report) -> str | None:
    names = set(report.primary.values())
    return next(iter(names)) if len(names) == 1 else None


def delta_header(report: Report) -> str:
    metric = _same_primary(report) or "primary metric"
    against = f"vs {selector_text(report.baseline)}" if report.baseline else "vs its teacher"
    return f"Δ {metric} {against} (95% Welch CI)"


def delta_cell(row: Row, report: Report) -> str:
    if row.is_reference:
        return "baseline"
    if row.delta is None:
        return "–"
    d = row.delta
    scale, _ = unit(report.primary[row.task])
    diff = number(d.diff * scale, 4, sign=True)
    if d.verdict == "n/a":
        return f"{diff} (n/a)" if math.isfinite(d.diff) else "n/a"
    return (
        f"{diff} [{number(d.low * scale, 4, sign=True)}, {number(d.high * scale, 4, sign=True)}] {d.verdict}"
    )


def elue_cell(row: Row) -> str:
    if row.elue is None:
        return "–"
    if row.elue.n_scored == 0:
        return "– (outside)" if row.elue.n_outside else "–"
    return number(row.elue.score, 4, sign=True)


def display_frame(report: Report) -> pd.DataFrame:
    """The table as strings, in the columns ``report.md`` shows (also logged to W&B)."""
    records = []
    for row in report.rows:
        record = {"row": KIND_MARK[row.kind] + row.label}
        record["n"] = str(row.n) if row.kind != "paper" else "paper"
        for metric in report.columns:
            record[header(metric)] = cell(row.summary(metric), metric, row.n)
        record[delta_header(report)] = delta_cell(row, report)
        if report.elue_baseline:
            record["elue_score"] = elue_cell(row)
        records.append(record)
    return pd.DataFrame.from_records(records)


def csv_frame(report: Report) -> pd.DataFrame:
    """One row per table row, raw units: ``<metric>/mean``, ``<metric>/std``, ``<metric>/n``."""
    records = []
    for row in report.rows:
        record: dict[str, object] = {"kind": row.kind, "task": row.task, "label": row.label}
        for key in report.group_by:
            record[key] = row.fields.get(key, "")
        record["n"] = row.n
        seeds = row.seeds if row.kind == "run" else []
        record["seeds"] = ";".join("" if s is None else str(s) for s in seeds)
        record["differs"] = "; ".join(f"{k}={v}" for k, v in row.differs.items())
        record["source"] = row.source
        for metric in report.columns:
            s = row.summary(metric)
            record[f"{metric}/mean"] = s.mean if s else math.nan
            record[f"{metric}/std"] = s.std if s else math.nan
            record[f"{metric}/n"] = s.n if s else 0
        d = row.delta
        record["delta/metric"] = report.primary[row.task]
        record["delta/vs"] = "(baseline)" if row.is_reference else row.delta_vs
        record["delta/diff"] = d.diff if d else math.nan
        record["delta/low"] = d.low if d else math.nan
        record["delta/high"] = d.high if d else math.nan
        record["delta/verdict"] = d.verdict if d else ""
        if report.elue_baseline:
            record["elue_score"] = row.elue.score if row.elue else math.nan
            record["elue_points"] = row.elue.n_scored if row.elue else 0
        records.append(record)
    return pd.DataFrame.from_records(records)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of a string frame (numbers right-aligned)."""
    columns = list(frame.columns)
    lines = ["| " + " | ".join(_escape(c) for c in columns) + " |"]
    lines.append("|" + "|".join("---" if c in ("row", "task") else "---:" for c in columns) + "|")
    for _, record in frame.iterrows():
        lines.append("| " + " | ".join(_escape(record[c]) for c in columns) + " |")
    return "\n".join(lines)


def _units_line(columns: Sequence[str]) -> str:
    shown = [f"{c} in {SCALED[c][1]}" for c in columns if c in SCALED]
    shown += (
        ["latencies in ms per forward pass of the whole batch (median)"]
        if any("latency_ms" in c for c in columns)
        else []
    )
    return ("Units: " + "; ".join(shown) + ". ") if shown else ""


def report_markdown(report: Report, plots: Sequence[Path], skipped_plots: Sequence[str]) -> str:
    """``report.md``: what was compared, the table, how to read it, and what was left out."""
    frame = display_frame(report)
    tasks = ", ".join(report.tasks)
    n_conf = sum(r.kind == "run" for r in report.rows)
    lines = [
        f"# slimnlp report: {tasks}",
        "",
        (
            f"{report.n_runs} runs in {n_conf} configurations, from {', '.join(report.paths)}. "
            f"Rows: {', '.join(report.group_by)} (runs that differ only in the seed form one row)."
        ),
        "",
        "Each cell: mean ± sample std (ddof=1) over the row's seeds; n = seeds (no ± when n=1 or when "
        "all seeds gave the same value; (n=k) where fewer seeds have the metric). "
        + _units_line(report.columns)
        + "★ = teacher row: the teacher's own figures (teacher/* in each run it taught; fine-tuned once, so "
        "its n counts measuring runs and its test std is 0)."
        + (
            " Rows marked (paper): numbers from the paper, not measured here."
            if any(r.kind == "paper" for r in report.rows)
            else ""
        ),
    ]
    if report.machine:
        lines += ["", f"Efficiency measured on: {report.machine}."]
    if report.code:
        lines += ["", f"Code (commit: runs): {report.code}."]
    lines += ["", markdown_table(frame), "", "## How to read it", ""]
    against = (
        f"the row matching {selector_text(report.baseline)} (per task)"
        if report.baseline
        else "the teacher that taught it"
    )
    lines.append(
        f"- **Δ**: the row's mean primary metric ({', '.join(sorted(set(report.primary.values())))}) minus "
        f"that of {against}, with a 95% Welch t-interval over seeds (unequal variances). **win** / **loss** "
        "only when the interval excludes 0, otherwise **n.s.**; n/a when either side has fewer than 2 seeds "
        "(or neither has any spread)."
    )
    if report.elue_baseline:
        curve_text = "; ".join(
            f"{task}: {len(c.flops)} points, {c.flops[0] / 1e9:.3g}–{c.flops[-1] / 1e9:.3g} GFLOPs"
            for task, c in report.elue_curves.items()
        )
        lines.append(
            "- **elue_score** (ELUE, Liu et al. 2022): mean over the row's seeds of p − p_base(f), p the "
            "primary metric, f = eff/flops, p_base the baseline curve: rows matching "
            f"{' or '.join(selector_text(s) for s in report.elue_baseline)}, linearly interpolated in FLOPs "
            f"({curve_text}). Points outside the curve's FLOPs range are not scored (– (outside)). "
            "In the metric's units (0.01 = 1 point)."
        )
    differing = [r for r in report.rows if r.differs]
    if differing:
        lines.append("- **Rows with the same label but different configurations** (kept apart, not pooled):")
        lines += [
            f"  - {r.label}: " + ", ".join(f"`{k}={v}`" for k, v in r.differs.items()) for r in differing
        ]
    sources = [r for r in report.rows if r.kind == "paper"]
    if sources:
        lines.append("- **Paper rows**: " + "; ".join(f"{r.label}: {r.source}" for r in sources) + ".")
    if report.failed:
        lines.append(
            f"- **{len(report.failed)} failed job(s)** (failed.json, no results.json) are not in the "
            "table: "
            + ", ".join(str(p) for p in report.failed[:10])
            + (" …" if len(report.failed) > 10 else "")
        )
    lines += [f"- {note}" for note in report.notes]
    lines += [f"- warning: {w}" for w in report.warnings]
    if plots or skipped_plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines += [f"- not drawn: {s}" for s in skipped_plots]
    return "\n".join(lines) + "\n"
