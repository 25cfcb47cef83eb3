"""Paper numbers to show beside the measured ones (``--reference FILE.yaml``).

Schema (one paper per file)::

    paper: "Sanh et al. 2019, DistilBERT"      # required: who reported the numbers
    task: tweet_sentiment                       # optional when the report has one task
    source: "Table 1"                           # optional: default source note for every row
    rows:                                       # required, at least one
      - label: "DistilBERT 6L"                  # required, unique in the file
        source: "Table 2, dev set"              # optional, overrides the file's source
        metrics:                                # required: slimnlp metric names -> numbers, raw units
          test/acc: 0.913                       #   (accuracy as a fraction, params/FLOPs as counts,
          eff/params: 66.0e6                    #    disk size in bytes), as results.json has them

Each becomes a row marked "paper" (``<label> (paper)``): shown in the table with its source in the notes;
no ± (a paper reports one number), no win/loss test (no seeds), not plotted (latency from another machine
is not comparable) and not on the ELUE curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from slimnlp.report.errors import ReportError
from slimnlp.report.rows import Row


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # YAML reads 66e6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def paper_rows(runs: Sequence[Any]) -> tuple[list[Row], list[str]]:
    """The paper numbers the runs' own configs carry (``paper``: an ``experiment=<paper row>``), one row per paper
    row, on the task the paper measured; and a note for each paper row whose runs are on another task
    (``scale=cpu``: the recipe on the embedded default, whose numbers are not the paper's to compare)."""
    rows: dict[str, Row] = {}
    notes: dict[str, str] = {}
    for run in runs:
        paper = run.config.get("paper") if isinstance(run.config, dict) else None
        if not isinstance(paper, dict) or not isinstance(paper.get("metrics"), dict):
            continue
        label, task = str(paper.get("label", "paper")), str(paper.get("task", run.task))
        if task != run.task:
            notes[label] = (f"{label}: the paper's numbers are on {task}; these runs are on {run.task} (scale=cpu), "
                            "so they are not shown beside it")
            continue
        values = {str(k): float(v) for k, v in paper["metrics"].items() if _number(v) is not None}
        where = "; ".join(str(paper[k]) for k in ("source", "split", "caveats") if paper.get(k))
        rows.setdefault(label, paper_row(label, task, values, where))
    return list(rows.values()), list(notes.values())


def paper_row(label: str, task: str, metrics: dict[str, float], source: str) -> Row:
    """A paper's numbers as a report row: marked "paper", no seeds, its source in the notes."""
    return Row(label=f"{label} (paper)", kind="paper", task=task,
               fields={"task": task, "technique": "paper", "student": label}, per_run=[metrics], source=source)


def load_reference(path: str | Path, tasks: Sequence[str]) -> list[Row]:
    """The paper rows of the reference file ``path``, for a report over ``tasks``."""
    path = Path(path)
    where = f"--reference {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ReportError(f"{where}: cannot read it ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ReportError(f"{where}: invalid YAML{at}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{where}: expected a mapping with 'paper' and 'rows'")
    paper = data.get("paper")
    if not isinstance(paper, str) or not paper.strip():
        raise ReportError(f"{where}: 'paper' (who reported the numbers) is required")
    task = data.get("task")
    if task is None:
        if len(tasks) != 1:
            raise ReportError(
                f"{where}: the runs cover {len(tasks)} tasks ({', '.join(tasks)}); say which with 'task:'"
            )
        task = tasks[0]
    elif str(task) not in tasks:
        raise ReportError(f"{where}: task '{task}' is not among the runs' tasks ({', '.join(tasks)})")
    entries = data.get("rows")
    if not isinstance(entries, list) or not entries:
        raise ReportError(f"{where}: 'rows' must be a non-empty list of {{label, metrics}}")
    rows, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
            raise ReportError(f"{where}: rows[{i}] needs a 'label'")
        label = entry["label"]
        if label in seen:
            raise ReportError(f"{where}: label '{label}' appears twice")
        seen.add(label)
        metrics = entry.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise ReportError(f"{where}: rows[{i}] ('{label}') needs 'metrics' (metric name: number)")
        values: dict[str, float] = {}
        for key, value in metrics.items():
            number = _number(value)
            if number is None or not math.isfinite(number):
                raise ReportError(f"{where}: rows[{i}] ('{label}') {key}={value!r} is not a number")
            values[str(key)] = number
        source = entry.get("source", data.get("source"))
        rows.append(paper_row(label, str(task), values, f"{paper}" + (f", {source}" if source else "")))
    return rows
