"""The plot of an Optuna study that a sweep wrote (``optuna_trials.csv``, ``slimnlp.sweep.tables``).

Several objectives: the first against each of the others (one panel each), every complete trial a point labelled
with its number, the study's Pareto set in red (``pareto`` column: no other trial is at least as good on every
objective); with two objectives the set is the front of the one panel and is joined in order of the second
objective, with more it is not a front in any one panel, so its points stay unjoined — ``study_pareto.png``. One objective: the objective per trial and the best so
far — ``study_history.png``. Failed and pruned trials are counted in the title, not drawn.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from slimnlp.report.errors import ReportError


def plot_study(trials_csv: Path, out: Path) -> Path:
    with trials_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ReportError(f"{trials_csv}: no trials")
    directions = rows[0]["directions"].split(";")
    header = list(rows[0])
    objectives = header[2:2 + len(directions)]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    counts = {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL")}
    title = (f"{trials_csv.parent.name}: {len(rows)} trials ({counts['COMPLETE']} complete, {counts['PRUNED']} "
             f"pruned, {counts['FAIL']} failed)")
    if len(objectives) >= 2:
        y_name = objectives[0]
        fig, axes = plt.subplots(1, len(objectives) - 1, figsize=(7 * (len(objectives) - 1), 5), squeeze=False)
        for ax, x_name, direction in zip(axes[0], objectives[1:], directions[1:]):
            points = [(float(r[x_name]), float(r[y_name]), r) for r in complete]
            ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", alpha=0.6, label="trial")
            for x, y, r in points:
                ax.annotate(r["number"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            front = sorted((p for p in points if p[2]["pareto"] == "True"), key=lambda p: p[0])
            style = "o-" if len(objectives) == 2 else "o"
            label = "Pareto front" if len(objectives) == 2 else f"Pareto set ({len(objectives)} objectives)"
            ax.plot([p[0] for p in front], [p[1] for p in front], style, color="tab:red", label=label)
            ax.set_xlabel(f"{x_name} ({direction})")
            ax.set_ylabel(f"{y_name} ({directions[0]})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=9)
        name = "study_pareto.png"
    else:
        fig, ax = plt.subplots(figsize=(7, 5))
        y_name = objectives[0]
        sign = 1.0 if directions[0] == "maximize" else -1.0
        xs = [int(r["number"]) for r in complete]
        ys = [float(r[y_name]) for r in complete]
        best, running = [], None
        for y in ys:
            running = y if running is None or sign * y > sign * running else running
            best.append(running)
        ax.scatter(xs, ys, color="tab:blue", alpha=0.6, label="trial")
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{y_name} ({directions[0]})")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        name = "study_history.png"
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
