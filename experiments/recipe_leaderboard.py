"""Issue #12's recipe leaderboard: the best test accuracy on the embedded default at a measured speed-up of at least
2x, 4x and 8x over the teacher (batch 32) and at no more than 25% and 10% of the teacher's bytes on disk — found
by an Optuna sweep over recipes, not picked by hand.

    python experiments/recipe_leaderboard.py [--search recipes] [--study NAME] [--trials 14] [--steps 200]
        [--repeats 20] [--report-only] [--merge STUDY ...]

The sweep: ``python train.py -m hparams_search=<search> hparams_search.n_trials=<trials>
trainer.max_steps=<steps> <COMMON>`` (``conf/hparams_search/recipes.yaml``: NSGA-II over kd into 2-6 layers, heads +
FFN pruning, DRONE, magnitude pruning, QAT and dynamic INT8 PTQ, each with its own hyperparameters; objectives
val/acc and eff/speedup_b32, both maximised; ``recipes_compact.yaml``: the small end, 1-2 layer students quantized
or ternarized with their embeddings or with a factorized embedding table, and the int8 teacher, with the bytes on
disk as a third objective). ``--merge`` writes one leaderboard over several kept studies of the same budget
(``experiments/recipe_leaderboard/leaderboard.md``), each row naming its study and trial. Every trial has the same student step budget; ``COMMON`` drops the
ONNX Runtime, attack and energy measurements, which the leaderboard does not read. The study lives in
``sweeps/<study>.db`` (re-running resumes it); every finished trial's ``results.json`` is kept in
``experiments/recipe_leaderboard/<study>/cells/trial_<n>/`` (committed), its study table and Pareto plot beside them.
A study is one budget: another ``--steps`` or ``--repeats`` (latency passes per model and batch size) is another
``--study``.
A row is chosen by validation accuracy among the trials inside the budget; its test accuracy is what is shown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from kept_cells import REPO, repo_relative

KEPT_ROOT = REPO / "experiments" / "recipe_leaderboard"
SWEEP_ROOT = REPO / "outputs" / "experiments" / "recipe_leaderboard"
COMMON = ["measure.runtimes=[torch]", "eval.robustness.attacks=[]", "energy.enabled=false",
          "trainer.enable_progress_bar=false"]
SPEEDUPS = (2.0, 4.0, 8.0)
BYTES = (0.25, 0.10)


def sweep(search: str, study: str, trials: int, steps: int, repeats: int) -> None:
    command = [sys.executable, str(REPO / "train.py"), "-m", f"hparams_search={search}",
               f"hparams_search.study_name={study}", f"hparams_search.n_trials={trials}",
               f"trainer.max_steps={steps}", f"measure.repeats={repeats}", *COMMON,
               f"hydra.sweep.dir={SWEEP_ROOT / study}"]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=False)


def keep(study: str) -> None:
    """Copy every finished trial's results.json and the study's tables (written afresh from the study, so a sweep
    stopped early keeps them too) into the committed folder."""
    import optuna

    from slimnlp.sweep.study import Objectives
    from slimnlp.sweep.tables import write_study_tables

    kept = KEPT_ROOT / study
    for results in (SWEEP_ROOT / study).glob("*/results.json"):
        trial = json.loads(results.read_text())["config"]["trial"]
        target = kept / "cells" / f"trial_{trial}" / "results.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results, target)
    db = REPO / "sweeps" / f"{study}.db"
    if db.is_file():
        loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
        names = loaded.user_attrs["objectives"]
        directions = ["maximize" if d.name == "MAXIMIZE" else "minimize" for d in loaded.directions]
        write_study_tables(loaded, Objectives.parse(names, directions), kept)


def leaderboard(*kept: Path) -> str:
    """The best trial (by validation accuracy) inside each budget, over the kept trials of every study in ``kept``."""
    cells = [(folder.name, json.loads(p.read_text())) for folder in kept
             for p in sorted((folder / "cells").glob("trial_*/results.json"))]
    if not cells:
        return "no kept trials yet"
    lines = ["| budget | study #trial | recipe | val acc | test acc | speed-up b32 | bytes (of teacher) |",
             "|---|---|---|---|---|---|---|"]
    budgets = [(f"speed-up >= {s:g}x", lambda m, s=s: m["eff/speedup_b32"] >= s) for s in SPEEDUPS]
    budgets += [(f"bytes <= {b:.0%}", lambda m, b=b: m["eff/disk_bytes"] <= b * m["teacher/eff/disk_bytes"])
                for b in BYTES]
    for name, inside in budgets:
        fitting = [(study, c) for study, c in cells if inside(c["metrics"])]
        if not fitting:
            lines.append(f"| {name} | none of {len(cells)} trials | | | | | |")
            continue
        study, best = max(fitting, key=lambda sc: sc[1]["metrics"]["val/acc"])
        m = best["metrics"]
        lines.append(f"| {name} | {study} #{best['config']['trial']} | {describe(best)} | {m['val/acc']:.4f} | "
                     f"{m['test/acc']:.4f} | {m['eff/speedup_b32']:.2f}x | "
                     f"{m['eff/disk_bytes'] / 1e6:.1f} MB ({m['eff/disk_bytes'] / m['teacher/eff/disk_bytes']:.0%}) |")
    return "\n".join(lines)


def describe(results: dict) -> str:
    config, technique = results["config"], results["config"]["technique"]
    keys = {"kd": ["temperature"], "head_pruning": ["head_sparsity", "ffn_sparsity"], "drone": ["rank_ratio"],
            "magnitude_pruning": ["sparsity"], "qat": ["bits", "targets"], "ternary": ["targets"],
            "embedding_factorization": ["rank"], "ptq_dynamic": ["targets"], "latency_pruning": ["target_speedup"],
            "ffn_pruning": ["head_sparsity", "ffn_sparsity"]}.get(results["technique"], [])
    shown = ", ".join(f"{k}={technique[k]:.3g}" if isinstance(technique[k], float)
                      else f"{k}={'+'.join(technique[k])}" if isinstance(technique[k], list) else f"{k}={technique[k]}"
                      for k in keys)
    layers = config["student"].get("num_layers")
    student = f"{layers}L" if layers else config["student"]["name"]  # a sampled depth renames the student
    return f"{results['technique']} {student}" + (f" ({shown})" if shown else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", default="recipes", help="the hparams_search option the sweep runs")
    parser.add_argument("--study", default="recipes_leaderboard")
    parser.add_argument("--trials", type=int, default=14)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--merge", nargs="+", metavar="STUDY", help="only write the leaderboard over these kept studies")
    args = parser.parse_args()
    if args.merge:
        table = leaderboard(*(KEPT_ROOT / study for study in args.merge))
        (KEPT_ROOT / "leaderboard.md").write_text(table + "\n")
        print(table)
        return
    kept = KEPT_ROOT / args.study
    if not args.report_only:
        sweep(args.search, args.study, args.trials, args.steps, args.repeats)
    keep(args.study)
    if (kept / "cells").is_dir():
        subprocess.run([sys.executable, "-m", "slimnlp.report", repo_relative(kept / "cells"), "--group-by",
                        "trial,technique", "--columns", "val/acc,test/acc,eff/speedup_b32,eff/disk_bytes,eff/flops",
                        "--out", repo_relative(kept)],
                       cwd=REPO, check=False)
        from slimnlp.report.study import plot_study

        print(plot_study(kept / "optuna_trials.csv", kept))
    table = leaderboard(kept)
    (kept / "leaderboard.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
