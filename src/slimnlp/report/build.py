"""From paths to a ``Report``: collect the runs, form the rows, pick the columns, compare, score.

Comparisons (the Δ column) are on the primary metric (``test/<data.primary_metric>`` unless ``--metric``):

- with ``--baseline KEY=VALUE[,KEY=VALUE]``: every row of a task against the row of that task the selector
  matches; where it matches several (``technique=finetune`` with one finetune row per student), against the
  one that agrees with the row on the other group-by fields (an error if that is still ambiguous);
- without it: every configuration against the teacher that taught it (its own teacher row), which is the
  question a compression paper asks first: how much did compressing cost? The teacher's values are
  repeated measurements of one fine-tuned model, so the interval there reflects the student's seeds only.

The ELUE score column appears only with ``--elue-baseline`` (see ``slimnlp.report.elue``).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimnlp.report.collect import MISSING, Collection, Run, collect
from slimnlp.report.elue import Curve, baseline_curve, elue_score
from slimnlp.report.errors import ReportError
from slimnlp.report.reference import load_reference, paper_rows
from slimnlp.report.rows import Row, configuration_rows, display, order_rows, teacher_rows
from slimnlp.report.stats import higher_is_better, welch_difference

DEFAULT_GROUP_BY = ("technique", "student")
DEFAULT_COLUMNS = (
    "test/acc",
    "test/f1",
    "eff/params",
    "eff/flops",
    "eff/disk_bytes",
    "eff/latency_ms_b1",
    "eff/latency_ms_b32",
    "eff/speedup_b32",
    "fidelity/agreement",
    "fidelity/prob_loyalty",
)
Selector = list[tuple[str, str]]


@dataclass
class Options:
    """What the CLI asked for, as plain values."""

    paths: list[str]
    group_by: list[str] = field(default_factory=lambda: list(DEFAULT_GROUP_BY))
    columns: list[str] | None = None
    metric: str | None = None
    baseline: Selector | None = None
    elue_baseline: list[Selector] | None = None
    reference: Path | None = None


@dataclass
class Report:
    """Everything the writers need: rows in display order, the columns, and what to say about them."""

    rows: list[Row]
    columns: list[str]
    group_by: list[str]
    primary: dict[str, str]  # task -> primary metric
    tasks: list[str]
    n_runs: int
    baseline: Selector | None
    elue_baseline: list[Selector] | None
    elue_curves: dict[str, Curve]
    warnings: list[str]
    notes: list[str]
    failed: list[Path]
    paths: list[str]
    machine: str = ""
    code: str = ""


def parse_selector(text: str, flag: str = "--baseline") -> Selector:
    """``"technique=finetune,student=4L"`` -> ``[("technique", "finetune"), ("student", "4L")]``."""
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"{flag} {text!r}: expected KEY=VALUE[,KEY=VALUE] (e.g. technique=finetune)")
        pairs.append((key.strip(), value.strip()))
    return pairs


def selector_text(selector: Selector) -> str:
    return ",".join(f"{k}={v}" for k, v in selector)


def value_matches(value: Any, wanted: str) -> bool:
    """Whether a row's field ``value`` equals the selector's text (``4`` matches ``4.0``, ``true`` True)."""
    if value is MISSING:
        return False
    if display(value) == wanted:
        return True
    try:
        parsed = yaml.safe_load(wanted)
    except yaml.YAMLError:
        return False
    return parsed == value and type(parsed) is not str


def matches(row: Row, selector: Selector) -> bool:
    return all(value_matches(row.get(key), wanted) for key, wanted in selector)


def _check_group_by(runs: Sequence[Run], group_by: Sequence[str]) -> None:
    for key in group_by:
        if all(run.get(key) is MISSING for run in runs):
            raise ReportError(
                f"--group-by {key}: no run has this field; use results fields (task, technique, student, "
                f"teacher, seed) or dotted config keys (e.g. technique.temperature)"
            )


def _primary(runs: Sequence[Run], task: str, metric: str | None) -> str:
    if metric:
        return metric
    names = Counter(
        str(name) for r in runs if r.task == task and isinstance(name := r.get("data.primary_metric"), str)
    )
    return f"test/{names.most_common(1)[0][0] if names else 'acc'}"


def _require_metric(name: str, available: Sequence[str], flag: str) -> None:
    """Raise, naming ``name`` and a few available metrics (the closest first), if no row has it."""
    if name in available:
        return
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    few = close + [a for a in available if a not in close][: 8 - len(close)]
    raise ReportError(
        f"{flag} {name}: no run has this metric; available: {', '.join(few)}"
        f"{', …' if len(available) > len(few) else ''} ({len(available)} in all)"
    )


def _available(rows: Sequence[Row]) -> list[str]:
    return sorted(set().union(*(row.values for row in rows)))


def _columns(requested: list[str] | None, rows: Sequence[Row], primaries: Sequence[str]) -> list[str]:
    available = _available(rows)
    if requested:
        for column in requested:
            _require_metric(column, available, "--columns")
        return list(dict.fromkeys(requested))
    chosen = [p for p in primaries if p in available]
    chosen += [c for c in DEFAULT_COLUMNS if c in available]
    return list(dict.fromkeys(chosen))


def _compare(
    rows: list[Row],
    report_primary: dict[str, str],
    baseline: Selector | None,
    group_by: Sequence[str],
    notes: list[str],
) -> None:
    """Fill ``delta`` / ``delta_vs`` of every row (see the module docstring)."""
    if baseline is None:
        teachers = {row.teacher_key: row for row in rows if row.kind == "teacher"}
        for row in rows:
            reference = teachers.get(row.teacher_key) if row.kind == "run" else None
            if reference is not None:
                metric = report_primary[row.task]
                row.delta = welch_difference(
                    row.values.get(metric, []), reference.values.get(metric, []), higher_is_better(metric)
                )
                row.delta_vs = reference.label
        return
    chosen = [r for r in rows if r.kind != "paper" and matches(r, baseline)]
    if not chosen:
        labels = ", ".join(r.label for r in rows if r.kind != "paper")
        raise ReportError(f"--baseline {selector_text(baseline)} matches no row; rows: {labels}")
    tasks_with_baseline = {r.task for r in chosen}
    for task in sorted({r.task for r in rows} - tasks_with_baseline):
        notes.append(f"task {task}: no row matches --baseline {selector_text(baseline)}, so no Δ there.")
    for row in rows:
        if row.kind == "paper" or row.task not in tasks_with_baseline:
            continue
        if row in chosen:
            row.is_reference = True
            continue
        reference = _reference_of(row, [r for r in chosen if r.task == row.task], baseline, group_by)
        if reference is None:
            continue
        metric = report_primary[row.task]
        row.delta = welch_difference(
            row.values.get(metric, []), reference.values.get(metric, []), higher_is_better(metric)
        )
        row.delta_vs = reference.label


def _reference_of(row: Row, candidates: list[Row], baseline: Selector, group_by: Sequence[str]) -> Row | None:
    """The baseline row ``row`` is compared with: the task's only one, or else the one that agrees with ``row``
    on the group-by fields the selector does not name (``--baseline technique=finetune`` compares ``kd · 2L``
    with ``finetune · 2L`` and ``kd · 4L`` with ``finetune · 4L``)."""
    if len(candidates) == 1:
        return candidates[0]
    named = {key for key, _ in baseline}
    free = [key for key in group_by if key not in named]
    paired = [c for c in candidates if all(c.get(k) == row.get(k) for k in free)]
    if len(paired) > 1:
        raise ReportError(
            f"--baseline {selector_text(baseline)} matches {len(paired)} rows for {row.label} "
            f"({'; '.join(r.label for r in paired)}): add a key to pick one (e.g. student=...)"
        )
    return paired[0] if paired else None


def _score_elue(
    rows: list[Row], primary: dict[str, str], selectors: list[Selector], notes: list[str]
) -> dict[str, Curve]:
    """Fill ``elue`` of every measured row of each task that has baseline rows; returns the curves."""
    chosen = [r for r in rows if r.kind != "paper" and any(matches(r, s) for s in selectors)]
    text = " or ".join(selector_text(s) for s in selectors)
    if not chosen:
        raise ReportError(f"--elue-baseline {text} matches no row")
    curves: dict[str, Curve] = {}
    for task in sorted({r.task for r in rows} - {r.task for r in chosen}):
        notes.append(f"task {task}: no row matches --elue-baseline {text}, so no elue_score there.")
    for task in sorted({r.task for r in chosen}):
        metric = primary[task]
        points = []
        for row in (r for r in chosen if r.task == task):
            flops, perf = row.summary("eff/flops"), row.summary(metric)
            if flops and perf:
                points.append((flops.mean, perf.mean))
        curves[task] = baseline_curve(points, f"--elue-baseline {text} (task {task}, eff/flops vs {metric})")
    for row in rows:
        if row.kind != "paper" and row.task in curves:
            row.elue = elue_score(row.points("eff/flops", primary[row.task]), curves[row.task])
    return curves


def _machine(runs: Sequence[Run]) -> str:
    """The machine the efficiency numbers were measured on, when all runs agree (else a warning text)."""
    kinds: Counter[tuple[str, int | None]] = Counter()
    for run in runs:
        device = run.env.get("cuda") or run.env.get("processor") or run.env.get("machine")
        threads = run.metrics.get("eff/threads")
        if device:
            kinds[(str(device), int(threads) if threads else None)] += 1
    if not kinds:
        return ""
    if len(kinds) > 1:
        return "several machines/thread counts (latencies not comparable across them): " + "; ".join(
            f"{d}{f', {t} threads' if t else ''} ({n} runs)" for (d, t), n in kinds.items()
        )
    (device, threads), _ = kinds.most_common(1)[0]
    return f"{device}{f', {threads} threads' if threads else ''}"


def _code(runs: Sequence[Run]) -> str:
    """The commits the runs' code came from (``env.code``), and the runs made on uncommitted edits: a table
    filled over several sessions says which code made it. Empty when no run recorded it (runs before
    2026-12-07's record)."""
    commits: Counter[str] = Counter()
    edited = []
    for run in runs:
        code = run.env.get("code")
        if not isinstance(code, dict) or not code.get("commit"):
            continue
        commits[str(code["commit"])[:10]] += 1
        if code.get("modified"):
            edited.append(f"{run.path.parent.name} ({', '.join(code['modified'])})")
    if not commits:
        return ""
    unrecorded = len(runs) - commits.total()
    parts = [", ".join(f"{commit} ({n} run{'s' if n > 1 else ''})" for commit, n in commits.most_common())]
    if unrecorded:
        parts.append(f"{unrecorded} run{'s' if unrecorded > 1 else ''} from before the record")
    if edited:
        parts.append("on uncommitted edits of the code: " + "; ".join(edited))
    return "; ".join(parts)


def build_report(options: Options, collection: Collection | None = None) -> Report:
    """The report for ``options`` (``collection``: runs already loaded, else found under ``options.paths``)."""
    collection = collection or collect(options.paths)
    runs = collection.runs
    warnings = list(collection.warnings)
    notes: list[str] = []
    tasks = sorted({r.task for r in runs})
    group_by = list(dict.fromkeys(options.group_by)) or list(DEFAULT_GROUP_BY)
    if len(tasks) > 1 and "task" not in group_by:
        raise ReportError(
            f"the runs cover {len(tasks)} tasks ({', '.join(tasks)}): one table needs task in --group-by "
            f"(e.g. --group-by task,{','.join(group_by)}) or report each task's folder on its own"
        )
    _check_group_by(runs, group_by)
    primary = {task: _primary(runs, task, options.metric) for task in tasks}
    rows = configuration_rows(runs, group_by, warnings) + teacher_rows(runs)
    if options.reference:
        rows += load_reference(options.reference, tasks)
    from_configs, paper_notes = paper_rows(runs)  # experiment=<paper row>: the paper's own numbers
    rows += [row for row in from_configs if row.label not in {r.label for r in rows}]
    notes += paper_notes
    rows = order_rows(rows)
    if options.metric:
        _require_metric(options.metric, _available([r for r in rows if r.kind == "run"]), "--metric")
    if len(tasks) > 1:  # teacher and paper labels do not name the task; the configuration labels do
        for row in rows:
            if row.kind != "run":
                row.label = f"{row.task} · {row.label}"
    columns = _columns(options.columns, rows, list(dict.fromkeys(primary.values())))
    _compare(rows, primary, options.baseline, group_by, notes)
    curves = _score_elue(rows, primary, options.elue_baseline, notes) if options.elue_baseline else {}
    if collection.teacher_caches:
        notes.append(
            f"{collection.teacher_caches} fine-tuned teacher cache result(s) left out (not student runs)."
        )
    for row in rows:
        if row.kind == "paper":
            hidden = sorted(k for k in row.values if k not in columns)
            if hidden:
                notes.append(f"{row.label}: not shown (not a column here): {', '.join(hidden)}.")
    return Report(
        rows=rows,
        columns=columns,
        group_by=group_by,
        primary=primary,
        tasks=tasks,
        n_runs=len(runs),
        baseline=options.baseline,
        elue_baseline=options.elue_baseline,
        elue_curves=curves,
        warnings=warnings,
        notes=notes,
        failed=collection.failed,
        paths=list(options.paths),
        machine=_machine(runs),
        code=_code(runs),
    )
