"""Optuna sweeps through ``python train.py -m hparams_search=...`` on the tiny setup: a SQLite study that runs
its budget and resumes, failing and NaN trials recorded as failed while the others complete, pruning through
Optuna's Lightning callback, two workers sharing one PostgreSQL study, and bad searches refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers import tiny_overrides

from slimnlp.sweep.tables import PARETO_CSV, TRIALS_CSV

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "integration"), str(TESTS)])}
# kd into 2 layers for one epoch: the trials' own cost is seconds
TRIAL = ["technique=kd", "student=2L", "trainer.max_epochs=1", "hparams_search.heartbeat_s=5"]


def sweep(tiny_setup, sweep_dir: Path, *extra: str, check: bool = True, wait: bool = True):
    root, corpus, teacher = tiny_setup
    command = [sys.executable, str(REPO / "train.py"), "-m", "hparams_search=kd_tune",
               *tiny_overrides(root, corpus, teacher), *TRIAL, f"hydra.sweep.dir={sweep_dir}", *extra]
    if not wait:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900, check=False)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def load(root: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{root / 'sweeps' / f'{name}.db'}")


def test_a_sqlite_study_runs_its_trials_records_them_and_resumes(tiny_setup, tmp_path):
    root = tiny_setup[0]
    sweep(tiny_setup, tmp_path / "first", "hparams_search.study_name=sqlite_resume", "hparams_search.n_trials=3",
          "hparams_search.pruner=null")
    study = load(root, "sqlite_resume")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == tmp_path / "first" and run_dir.name.startswith(f"{trial.number}_kd_2L")
        results = json.loads(Path(trial.user_attrs["results"]).read_text())
        assert trial.value == pytest.approx(results["metrics"]["val/acc"])  # the objective is read from results
        assert results["config"]["trial"] == trial.number
        sampled = {"technique.temperature": results["config"]["technique"]["temperature"],
                   "technique.alpha": results["config"]["technique"]["alpha"],
                   "optim.optimizer.lr": results["config"]["optim"]["optimizer"]["lr"]}
        assert sampled == pytest.approx(trial.params)  # the run trained with the trial's values
    assert len({t.params["technique.temperature"] for t in trials}) == 3
    assert (tmp_path / "first" / TRIALS_CSV).read_text().count("COMPLETE") == 3
    assert (tmp_path / "first" / PARETO_CSV).is_file()
    report = subprocess.run([sys.executable, "-m", "slimnlp.report", str(tmp_path / "first"), "--out",
                             str(tmp_path / "report")], env=ENV, capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "study_history.png").is_file()  # the study's plot beside the trials' table
    # same study, larger budget: the three trials stay, one more runs
    sweep(tiny_setup, tmp_path / "second", "hparams_search.study_name=sqlite_resume", "hparams_search.n_trials=4",
          "hparams_search.pruner=null")
    resumed = load(root, "sqlite_resume").get_trials()
    assert [t.number for t in resumed] == [0, 1, 2, 3]
    assert [t.params for t in resumed[:3]] == [t.params for t in trials]
    assert Path(resumed[3].user_attrs["run_dir"]).parent == tmp_path / "second"


def test_failing_and_nan_trials_are_failed_and_the_others_complete(tiny_setup, tmp_path):
    root = tiny_setup[0]
    result = sweep(
        tiny_setup, tmp_path / "sweep", "hparams_search.study_name=failures", "hparams_search.n_trials=4",
        "hparams_search.pruner=null", "~hparams_search.params", "callbacks.outcome.mode=choice(ok,crash,nan_value,fine)",
        "hparams_search.objectives=[val/reported]",
        "+hparams_search.sampler.search_space={callbacks.outcome.mode: [ok, crash, nan_value, fine]}",
        "hparams_search.sampler._target_=optuna.samplers.GridSampler", "~hparams_search.sampler.n_startup_trials",
        "+callbacks.outcome._target_=helpers.TrialOutcome", "+callbacks.outcome.mode=ok",
    )
    trials = {t.params["callbacks.outcome.mode"]: t for t in load(root, "failures").get_trials()}
    assert sorted(trials) == ["crash", "fine", "nan_value", "ok"], result.stderr[-3000:]
    assert trials["ok"].value == trials["fine"].value == 0.5
    assert trials["crash"].state == trials["nan_value"].state == optuna.trial.TrialState.FAIL
    assert "simulated crash of a trial" in trials["crash"].user_attrs["failure"]
    assert trials["nan_value"].user_attrs["failure"] == "val/reported is nan"
    assert (Path(trials["nan_value"].user_attrs["run_dir"]) / "results.json").is_file()  # the run itself finished


def test_a_pruner_stops_trials_through_the_lightning_callback(tiny_setup, tmp_path):
    root = tiny_setup[0]
    sweep(tiny_setup, tmp_path / "sweep", "hparams_search.study_name=pruned", "hparams_search.n_trials=2",
          "~hparams_search.pruner", "+hparams_search.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 1.1}",
          "trainer.max_epochs=3")
    trials = load(root, "pruned").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    for trial in trials:  # reported once, after the first epoch's validation, then stopped
        assert list(trial.intermediate_values) == [0]
        assert 0.0 <= trial.intermediate_values[0] <= 1.0
        assert not (Path(trial.user_attrs["run_dir"]) / "results.json").exists()


def test_two_workers_share_one_postgresql_study(tiny_setup, tmp_path, postgres_url):
    _, corpus, teacher = tiny_setup
    root = tmp_path / "root"  # no cached teacher: the two workers must fine-tune it once between them
    fresh = (root, corpus, teacher)
    name, n_trials = f"shared_{os.getpid()}", 6
    common = [f"hparams_search.study_name={name}", f"hparams_search.storage={postgres_url}",
              f"hparams_search.n_trials={n_trials}", "hparams_search.pruner=null"]
    workers = [sweep(fresh, tmp_path / "sweep", *common, wait=False) for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    trials = load(root, name, postgres_url).get_trials()
    ran = [t for t in trials if "skipped" not in t.user_attrs]
    assert sorted(t.number for t in ran) == list(range(n_trials))  # none lost, none run twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ran)
    folders = {t.user_attrs["run_dir"] for t in ran}
    assert len(folders) == n_trials and all((Path(f) / "results.json").is_file() for f in folders)
    configured = {json.loads((Path(f) / "results.json").read_text())["config"]["trial"] for f in folders}
    assert configured == set(range(n_trials))
    assert all(": complete" in output for output in outputs)  # both workers ran trials
    log = "".join(outputs)
    assert log.count("fine-tuning it first") == 1  # one teacher for the whole study (the cache lock)
    assert len(list((root / "outputs" / "teachers").rglob("model.safetensors"))) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["technique.temperature=interval(5.0, 1.0)"], r"technique.temperature='interval\(5.0, 1.0\)'.*low < high"),
        (["hparams_search.directions=[up]"], r"hparams_search.directions='up'.*maximize or minimize"),
        (["hparams_search.objectives=[val/acc,eff/latency_ms_b32]"], r"hparams_search.directions=.*one of"),
        (["hparams_search.n_trials=0"], r"hparams_search.n_trials=0.*an int >= 1"),
        (["technique=magnitude_pruning", "~hparams_search.params", "technique.sparsity=interval(0.5,1.0)"],
         r"technique.sparsity"),
        (["+hparams_search.conditional.student={2L: {technique.alpha: 0.5}}"],
         r"hparams_search.conditional.student='student'.*choice"),
        (["hparams_search.storage=nosuchdb://x"], r"hparams_search.storage='nosuchdb://x'.*reachable SQLAlchemy URL"),
    ],
)
def test_a_bad_search_fails_in_one_line_before_any_trial(tiny_setup, tmp_path, extra, message):
    import re

    result = sweep(tiny_setup, tmp_path / "sweep", "hparams_search.study_name=bad", *extra, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr[-3000:]
    assert not (tmp_path / "sweep").exists()  # nothing launched


def test_trials_run_in_parallel_through_hydras_joblib_launcher(tiny_setup, tmp_path):
    root = tiny_setup[0]
    sweep(tiny_setup, tmp_path / "sweep", "hparams_search.study_name=joblib", "hparams_search.n_trials=2",
          "hparams_search.n_jobs=2", "hparams_search.pruner=null", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    trials = load(root, "joblib").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    from datetime import datetime, timedelta

    windows = []  # each run's own time: from its start (end less run()'s seconds) to its end
    for trial in trials:
        results = json.loads(Path(trial.user_attrs["results"]).read_text())
        end = datetime.fromisoformat(results["finished_at"])
        windows.append((end - timedelta(seconds=results["metrics"]["time/run_s"]), end))
    assert windows[0][0] < windows[1][1] and windows[1][0] < windows[0][1]  # the two runs overlapped in time
    assert {Path(t.user_attrs["run_dir"]).name.split("_")[0] for t in trials} == {"0", "1"}
