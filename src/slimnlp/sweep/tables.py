"""A study as files: ``optuna_trials.csv`` (every trial: number, state, objective values, parameters, run folder,
failure) and ``optuna_pareto.csv`` (the complete trials no other complete trial beats on every objective; for one
objective, the best trial). ``python -m slimnlp.report <sweep folder>`` plots them (``study_pareto.png``)."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna

from slimnlp.sweep.study import Objectives

TRIALS_CSV = "optuna_trials.csv"
PARETO_CSV = "optuna_pareto.csv"


def write_study_tables(study: optuna.Study, objectives: Objectives, folder: Path) -> tuple[Path, Path]:
    trials = study.get_trials(deepcopy=False)
    best = {t.number for t in study.best_trials} if _has_complete(trials) else set()
    params = sorted({key for t in trials for key in t.params})
    header = ["number", "state", *objectives.names, *params, "pareto", "run_dir", "failure",
              "directions"]
    directions = ";".join(objectives.directions)
    rows = []
    for t in trials:
        values = list(t.values) if t.values is not None else [None] * len(objectives.names)
        rows.append([t.number, t.state.name, *values, *(t.params.get(p) for p in params), t.number in best,
                     t.user_attrs.get("run_dir"), t.user_attrs.get("failure") or t.user_attrs.get("skipped"),
                     directions])
    folder.mkdir(parents=True, exist_ok=True)
    trials_csv, pareto_csv = folder / TRIALS_CSV, folder / PARETO_CSV
    _write(trials_csv, header, rows)
    _write(pareto_csv, header, [r for r in rows if r[header.index("pareto")]])
    return trials_csv, pareto_csv


def _has_complete(trials: list[optuna.trial.FrozenTrial]) -> bool:
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
