"""Find and load ``results.json`` files: runs, multiruns and sweeps alike, any depth below the given paths.

A file that cannot be read as a run (invalid JSON, not an object, no ``metrics`` dict) is skipped with a
warning naming it, so one half-written job never takes the report down. The fine-tuned teachers' own
``results.json`` (under ``outputs/teachers``: no config, a ``recipe``) are not student runs and are left out
quietly; the teacher enters the report through the ``teacher/*`` metrics every run carries. Failed jobs
(``failed.json``, no ``results.json``) are counted so the report can say how many cells are missing.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimnlp.report.errors import ReportError
from slimnlp.results import FAILED_FILE, RESULTS_FILE

TOP_LEVEL_FIELDS = ("task", "technique", "student", "teacher", "seed")
MISSING = object()  # a field a run does not have (distinct from a null value)


@dataclass(frozen=True)
class Run:
    """One finished run, as the report needs it: the identifying fields, numeric metrics and the config."""

    path: Path
    task: str
    technique: str
    student: str
    teacher: str | None
    seed: int | None
    metrics: dict[str, float]
    config: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""
    env: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        """A top-level results field (``task``, ``technique`` …) or a dotted config key
        (``technique.temperature``); ``MISSING`` when the run has neither."""
        if key in TOP_LEVEL_FIELDS:
            return getattr(self, key)
        return lookup(self.config, key)


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; ``MISSING`` if any step is absent."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


@dataclass
class Collection:
    """What was found: the runs, one warning per skipped file, and the failed jobs' folders."""

    runs: list[Run]
    warnings: list[str]
    failed: list[Path]
    teacher_caches: int = 0


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def find_results(paths: Sequence[str]) -> tuple[list[Path], list[Path], list[str]]:
    """Every ``results.json`` and ``failed.json`` (without a ``results.json`` beside it) under ``paths``
    (folders, files or glob patterns; ``**`` recurses), sorted, each once; and the paths that named nothing."""
    roots: list[Path] = []
    missing: list[str] = []
    for text in paths:
        matches = sorted(glob.glob(text, recursive=True)) if _has_glob(text) else [text]
        existing = [Path(m) for m in matches if Path(m).exists()]
        if not existing:
            missing.append(text)
        roots.extend(existing)
    found: set[Path] = set()
    failed: set[Path] = set()
    for root in roots:
        if root.is_file():
            if root.name == RESULTS_FILE:
                found.add(root.resolve())
            elif root.name == FAILED_FILE and not (root.parent / RESULTS_FILE).exists():
                failed.add(root.parent.resolve())
            continue
        found.update(p.resolve() for p in root.rglob(RESULTS_FILE) if p.is_file())
        failed.update(
            p.parent.resolve() for p in root.rglob(FAILED_FILE) if not (p.parent / RESULTS_FILE).exists()
        )
    return sorted(found), sorted(failed), missing


def _numeric_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """The metrics that are numbers (bools and strings dropped; NaN kept, the statistics skip it)."""
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[str(key)] = float(value)
    return out


def _text(value: Any) -> str:
    return "?" if value is MISSING or value is None else str(value)


def load_run(path: Path) -> Run | str | None:
    """The run in ``path``; a warning string when the file is not a usable run; ``None`` for a fine-tuned
    teacher's own results (not a student run)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return f"skipped {path}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except (OSError, UnicodeDecodeError) as err:
        return f"skipped {path}: unreadable ({err})"
    if not isinstance(data, dict):
        return f"skipped {path}: not a JSON object"
    if "recipe" in data and not data.get("config"):
        return None
    if not isinstance(data.get("metrics"), dict):
        return f"skipped {path}: no 'metrics' dict (partial or corrupt results.json)"
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    task = data.get("task") or lookup(config, "data.task_name")
    if task is MISSING or not task or isinstance(task, (dict, list)):
        return f"skipped {path}: no 'task'"
    seed = data.get("seed", config.get("seed"))
    return Run(
        path=path,
        task=str(task),
        technique=str(data.get("technique") or "?"),
        student=str(data.get("student") or _text(lookup(config, "student.name"))),
        teacher=None if data.get("teacher") is None else str(data["teacher"]),
        seed=int(seed)
        if isinstance(seed, (int, float)) and not isinstance(seed, bool) and math.isfinite(seed)
        else None,
        metrics=_numeric_metrics(data["metrics"]),
        config=config,
        artifacts=data.get("artifacts") if isinstance(data.get("artifacts"), dict) else {},
        finished_at=str(data.get("finished_at") or ""),
        env=data.get("env") if isinstance(data.get("env"), dict) else {},
    )


def collect(paths: Iterable[str]) -> Collection:
    """Load every run under ``paths``. Raises ``ReportError`` when there is no ``results.json`` at all, or
    none of them could be read."""
    paths = list(paths)
    files, failed, missing = find_results(paths)
    if not files:
        where = ", ".join(paths) or "(no paths given)"
        extra = f" ({len(failed)} failed job(s) with failed.json only)" if failed else ""
        raise ReportError(f"no results.json under {where}{extra}")
    runs: list[Run] = []
    warnings = [f"{text}: no such file or folder (or the pattern matches nothing)" for text in missing]
    teacher_caches = 0
    for file in files:
        loaded = load_run(file)
        if loaded is None:
            teacher_caches += 1
        elif isinstance(loaded, str):
            warnings.append(loaded)
        else:
            runs.append(loaded)
    if not runs:
        skipped = [w for w in warnings if w.startswith("skipped ")]
        reason = f": {skipped[0]}" if len(skipped) == 1 else f" ({len(skipped)} skipped, see the warnings)"
        raise ReportError(f"no readable run under {', '.join(paths)}{reason}")
    return Collection(runs, warnings, failed, teacher_caches)
