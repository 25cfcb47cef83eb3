"""The Optuna sweep's own cost per trial against a small trial's wall time (issue #12: under 5%).

    python benchmarks/sweep_overhead.py [--trials 4] [--steps 30]

Runs ``python train.py -m hparams_search=kd_tune`` on the embedded default (kd into 2 layers, ``trainer.max_steps``
optimizer steps per trial, the ONNX/attack/energy measurements off) in a fresh study, then reads the study and the
trials' results: a trial's ``time/run_s`` is ``run()`` (plan, models, training, saving, measuring); everything else
between the first trial's ask and the last trial's tell — asking and sampling, composing and checking each
trial's config, Hydra's job setup, reading results and telling the study — is the sweep's overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        name, storage = f"overhead_{int(time.time())}", f"sqlite:///{tmp}/study.db"
        command = [sys.executable, str(REPO / "train.py"), "-m", "hparams_search=kd_tune", "student=2L",
                   f"hparams_search.study_name={name}", f"hparams_search.storage={storage}",
                   f"hparams_search.n_trials={args.trials}", "hparams_search.pruner=null",
                   f"trainer.max_steps={args.steps}", "measure.runtimes=[torch]", "eval.robustness.attacks=[]",
                   "energy.enabled=false", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp}/sweep"]
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        total = time.perf_counter() - started
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        runs = [json.loads(Path(t.user_attrs["results"]).read_text())["metrics"]["time/run_s"] for t in trials]
    first_ask = min(t.datetime_start for t in trials)
    last_tell = max(t.datetime_complete for t in trials)
    swept = (last_tell - first_ask).total_seconds()
    overhead = (swept - sum(runs)) / len(trials)
    trial_wall = swept / len(trials)
    print(f"{len(trials)} trials of {args.steps} steps; command {total:.1f} s (process start and pre-flight "
          f"{total - swept:.1f} s, once per sweep)")
    print(f"mean trial wall {trial_wall:.2f} s, of which run() {sum(runs) / len(runs):.2f} s")
    print(f"sweep overhead per trial {overhead:.2f} s = {overhead / trial_wall:.1%} of a trial's wall time")


if __name__ == "__main__":
    main()
