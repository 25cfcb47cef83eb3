"""Rows of the report: one per configuration (its seeds pooled), one per teacher, one per paper number.

A configuration is everything a run's config says except the seed and where the run lived: ``seed``,
``paths.*``, ``hydra.*``, ``resume``, ``logger.*``, ``tags``, ``trainer.enable_progress_bar``, ``trial`` (a
sweep's trial number: null outside sweeps, absent from configs older than the key), and any string
value inside the folders slimnlp writes to (the run folder, ``paths.output_root``, the caches; e.g. the
checkpoint callback's ``dirpath``, ``trainer.default_root_dir``). Runs whose configurations agree form one
row, so the row's spread is seed noise and nothing else.

The row *label* comes from the ``--group-by`` fields. Two configurations that share a label (say, two
temperatures of ``kd · 4L`` when temperature is not a group-by field) are never pooled: a researcher who
pooled them would report a mean over different methods and a std that is not seed noise. They stay two
rows, each label followed by the keys that tell them apart (``kd · 4L [technique.temperature=2.0]``), and
the report lists those keys in full.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimnlp.report.collect import MISSING, Run, lookup
from slimnlp.report.elue import EluePoint
from slimnlp.report.stats import Difference, Summary, summarize
from slimnlp.results import BOOKKEEPING_KEYS

LOCATION_KEYS = ("seed", *BOOKKEEPING_KEYS, "trainer.enable_progress_bar")
WRITE_DIRS = ("output_dir", "runs_dir", "cache_dir", "teachers_dir", "output_root")
MAX_LABEL_KEYS = 3  # differing keys named in a label; the rest in the report's notes
ABSENT = "<absent>"


@dataclass
class Row:
    """One line of the table. ``per_run`` holds each run's metrics (a teacher's: its ``teacher/*`` figures
    in that run); ``values`` every finite value of each metric over them (one per seed for a configuration,
    one per measuring run for a teacher, the number itself for a paper row). The comparison and ELUE fields
    are filled in by ``slimnlp.report.build``."""

    label: str
    kind: str  # "run" | "teacher" | "paper"
    task: str
    fields: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    per_run: list[dict[str, float]] = field(default_factory=list)
    differs: dict[str, str] = field(default_factory=dict)
    teacher_key: tuple[str, ...] | None = None
    source: str = ""
    delta: Difference | None = None  # primary metric minus the reference row's
    delta_vs: str = ""  # the reference row's label
    is_reference: bool = False
    elue: EluePoint | None = None
    values: dict[str, list[float]] = field(init=False)

    def __post_init__(self) -> None:
        self.values = _finite_values(self.per_run)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    def points(self, x: str, y: str) -> list[tuple[float, float]]:
        """``(x, y)`` per run that has both (e.g. ``eff/flops`` and ``test/acc`` for the ELUE score)."""
        return [(m[x], m[y]) for m in self.per_run if x in m and y in m]

    def summary(self, metric: str) -> Summary | None:
        values = self.values.get(metric)
        return summarize(values) if values else None

    def get(self, key: str) -> Any:
        """A field for ``--baseline`` / ``--elue-baseline`` selectors: ``kind``, ``label``, a group-by field,
        or (configuration rows) any run field or dotted config key; ``MISSING`` if the row has none."""
        if key == "kind":
            return self.kind
        if key == "label":
            return self.label
        if key in self.fields:
            return self.fields[key]
        if self.kind == "run" and self.runs:
            return self.runs[0].get(key)
        return MISSING


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (empty dicts kept as leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_location_key(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in LOCATION_KEYS)


def _inside(value: str, folders: Sequence[str]) -> bool:
    return any(value == f or value.startswith(f.rstrip("/") + "/") for f in folders)


def config_signature(run: Run, subtree: str | None = None) -> dict[str, str]:
    """The run's configuration without seed and location keys, each value JSON-encoded (comparable,
    hashable). ``subtree`` (``"teacher"``) keeps only that part."""
    folders = [str(run.path.parent)]
    for name in WRITE_DIRS:
        value = lookup(run.config, f"paths.{name}")
        if isinstance(value, str) and value:
            folders.append(value)
    tree = run.config if subtree is None else {subtree: run.config.get(subtree, {})}
    signature: dict[str, str] = {}
    for key, value in flatten(tree).items():
        if _is_location_key(key) or (isinstance(value, str) and _inside(value, folders)):
            continue
        signature[key] = json.dumps(value, sort_keys=True, default=str)
    return signature


def display(value: Any) -> str:
    """A field value as a label shows it."""
    if value is MISSING or value is None:
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _finite_values(dicts: Sequence[dict[str, float]]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = defaultdict(list)
    for metrics in dicts:
        for key, value in metrics.items():
            if math.isfinite(value):
                values[key].append(value)
    return dict(values)


def _differing_keys(signatures: Sequence[dict[str, str]]) -> list[str]:
    keys = sorted(set().union(*signatures))
    return [k for k in keys if len({s.get(k, ABSENT) for s in signatures}) > 1]


def _decoded(text: str) -> str:
    return text if text == ABSENT else display(json.loads(text))


def _with_keys(base: str, differs: dict[str, str]) -> str:
    if not differs:
        return base
    shown = [f"{k}={v}" for k, v in list(differs.items())[:MAX_LABEL_KEYS]]
    more = len(differs) - MAX_LABEL_KEYS
    return f"{base} [{', '.join(shown)}{f', +{more} more' if more > 0 else ''}]"


def _one_run_per_seed(runs: list[Run], label: str, warnings: list[str]) -> list[Run]:
    """Two results of one configuration and seed (a re-run) would count one seed twice: keep the newest."""
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for run in runs:
        by_seed[run.seed].append(run)
    kept = []
    for seed, same in by_seed.items():
        if seed is None:  # no seed recorded: nothing says these are re-runs
            kept.extend(same)
            continue
        same.sort(key=lambda r: (r.finished_at, str(r.path)))
        if len(same) > 1:
            warnings.append(
                f"{label}: {len(same)} runs with seed {seed}; kept the newest ({same[-1].path}), "
                f"left out {', '.join(str(r.path) for r in same[:-1])}"
            )
        kept.append(same[-1])
    return sorted(kept, key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))


def teacher_key(run: Run) -> tuple[str, ...]:
    """What identifies the teacher a run was measured against: task, name, the cached teacher's folder name
    (``seed42-<recipe digest>``) and the teacher's config."""
    folder = run.artifacts.get("teacher_dir")
    folder_name = Path(str(folder)).name if folder else ""
    signature = json.dumps(config_signature(run, "teacher"), sort_keys=True)
    return (run.task, run.teacher or "?", folder_name, signature)


def configuration_rows(runs: Sequence[Run], group_by: Sequence[str], warnings: list[str]) -> list[Row]:
    """Group ``runs`` into rows: same group-by values and same configuration (see the module docstring)."""
    cells: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        cells[(run.task, *(display(run.get(k)) for k in group_by))].append(run)
    rows: list[Row] = []
    for (task, *values), cell in cells.items():
        parts: dict[str, list[Run]] = defaultdict(list)
        signatures: dict[str, dict[str, str]] = {}
        for run in cell:
            signature = config_signature(run)
            key = json.dumps(signature, sort_keys=True)
            parts[key].append(run)
            signatures[key] = signature
        differing = _differing_keys(list(signatures.values())) if len(parts) > 1 else []
        base = " · ".join(values) if values else task
        for key, part in parts.items():
            differs = {k: _decoded(signatures[key].get(k, ABSENT)) for k in differing}
            label = _with_keys(base, differs)
            part = _one_run_per_seed(part, label, warnings)
            rows.append(
                Row(
                    label=label,
                    kind="run",
                    task=task,
                    fields={"task": task, **dict(zip(group_by, values))},
                    runs=part,
                    per_run=[r.metrics for r in part],
                    differs=differs,
                    teacher_key=teacher_key(part[0]),
                )
            )
    return rows


def _teacher_metrics(run: Run) -> dict[str, float]:
    """The teacher's figures in ``run`` (``teacher/x`` -> ``x``); its speed-up and compression against
    itself are 1 by definition."""
    metrics = {k.removeprefix("teacher/"): v for k, v in run.metrics.items() if k.startswith("teacher/")}
    if metrics:
        for key in run.metrics:
            if not key.startswith("teacher/") and ("speedup" in key or "compression" in key):
                metrics.setdefault(key, 1.0)
    return metrics


def teacher_rows(runs: Sequence[Run]) -> list[Row]:
    """One row per distinct teacher (per task), from the ``teacher/*`` metrics of the runs it taught. Its
    ``n`` counts the runs that measured it: the teacher was fine-tuned once, so its std is measurement noise
    (latency) and is 0 for test metrics."""
    measured: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        if run.teacher is not None and _teacher_metrics(run):
            measured[teacher_key(run)].append(run)
    by_name: dict[tuple[str, str], list[tuple[str, ...]]] = defaultdict(list)
    for key in measured:
        by_name[(key[0], key[1])].append(key)
    rows: list[Row] = []
    for (task, name), keys in by_name.items():
        signatures = [{**json.loads(k[3]), "teacher_dir": json.dumps(k[2])} for k in keys]
        differing = _differing_keys(signatures) if len(keys) > 1 else []
        for key, signature in zip(keys, signatures):
            differs = {k: _decoded(signature.get(k, ABSENT)) for k in differing}
            part = measured[key]
            rows.append(
                Row(
                    label=_with_keys(f"teacher ({name})", differs),
                    kind="teacher",
                    task=task,
                    fields={"task": task, "technique": "teacher", "student": name, "teacher": name},
                    runs=part,
                    per_run=[_teacher_metrics(r) for r in part],
                    differs=differs,
                    teacher_key=key,
                )
            )
    return rows


def order_rows(rows: Sequence[Row]) -> list[Row]:
    """Per task: teachers first (the reference point), then configurations by label, then paper rows."""
    rank = {"teacher": 0, "run": 1, "paper": 2}
    return sorted(rows, key=lambda r: (r.task, rank[r.kind], r.label))
