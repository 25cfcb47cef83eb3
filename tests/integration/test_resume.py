"""Resume in place, as a user would: a crashed or killed run continues in its own folder with
``resume=true``, skips what it finished, continues mid-epoch with the batches it had not seen, and ends
with the same number of optimizer steps and the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_tiny, tiny_overrides

from slimnlp.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
EVERY = "callbacks.last_checkpoint.every_n_train_steps=4"


def _runs(tiny_setup) -> Path:
    return tiny_setup[0] / "outputs" / "runs"


def test_crash_after_the_last_validation_resumes_in_place(tiny_setup):
    common = ["technique=kd", "student=2L", "seed=3", "trainer.max_epochs=2", EVERY]
    reference = run_tiny(tiny_setup, "uninterrupted_test_crash", *common)
    with pytest.raises(RuntimeError, match="simulated crash before testing"):
        run_tiny(tiny_setup, "crashed_at_test", *common, "+callbacks.crash._target_=helpers.CrashAtTest")
    crashed = _runs(tiny_setup) / "crashed_at_test"
    assert not (crashed / "results.json").exists()
    best_before = sorted(p.name for p in (crashed / "checkpoints").glob("best*.ckpt"))
    assert len(best_before) == 1
    stale = crashed / "checkpoints" / "best-0-0-stale.ckpt"  # what an earlier run in a re-used folder can leave
    stale.write_bytes(b"")

    other_config = [c if c != "seed=3" else "seed=4" for c in common]
    with pytest.raises(ConfigError, match="resume.*a run of this launch's config"):
        run_tiny(tiny_setup, "relaunch_other_config", *other_config, f"resume={crashed}")
    resumed = run_tiny(tiny_setup, "relaunch_test_crash", *common, "resume=true")
    assert resumed["run_dir"] == str(crashed)  # continued in its own folder
    assert (crashed / "results.json").exists() and not (_runs(tiny_setup) / "relaunch_test_crash" / "results.json").exists()
    assert resumed["artifacts"]["resumed_from"] == str(crashed)
    assert sorted(p.name for p in (crashed / "checkpoints").glob("best*.ckpt")) == sorted([*best_before, stale.name])
    # the checkpoint the callback kept (and the run restored), not the first best*.ckpt in the folder
    assert resumed["artifacts"]["best_checkpoint"] == str(crashed / "checkpoints" / best_before[0])
    m, ref = resumed["metrics"], reference["metrics"]
    assert m["val/acc"] == pytest.approx(ref["val/acc"])  # the validation from before the crash is reported
    assert m["train/optimizer_steps"] == ref["train/optimizer_steps"]
    assert m["test/acc"] == pytest.approx(ref["test/acc"], abs=0.01)
    # a finished run is never picked up again
    again = run_tiny(tiny_setup, "fresh_after_finish", *common, "resume=true")
    assert again["run_dir"] == str(_runs(tiny_setup) / "fresh_after_finish")


def test_multi_stage_run_skips_finished_stages(tiny_setup, caplog):
    common = ["technique=tinybert", "student=2L", "seed=5", "technique.intermediate_epochs=1",
              "technique.prediction_epochs=2", EVERY]
    reference = run_tiny(tiny_setup, "tinybert_whole", *common)
    crash = ["+callbacks.crash._target_=helpers.CrashAtStep", "+callbacks.crash.step=6",
             "+callbacks.crash.stage=prediction"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_tiny(tiny_setup, "tinybert_crashed", *common, *crash)
    crashed = _runs(tiny_setup) / "tinybert_crashed"
    assert (crashed / "stages" / "intermediate" / "done.json").exists()
    with caplog.at_level("INFO"):
        resumed = run_tiny(tiny_setup, "tinybert_relaunch", *common, "resume=true")
    assert any("intermediate finished before the resume" in r.getMessage() for r in caplog.records)
    assert resumed["run_dir"] == str(crashed)
    m, ref = resumed["metrics"], reference["metrics"]
    assert m["train/optimizer_steps"] == ref["train/optimizer_steps"]
    assert m["test/acc"] == pytest.approx(ref["test/acc"], abs=0.01)
    assert not (crashed / "stages" / "intermediate" / "student").exists()  # cleaned once finished


def _cli(tiny_setup, run_dir: Path, *extra: str) -> list[str]:
    root, corpus, teacher = tiny_setup
    return [sys.executable, str(REPO / "train.py"), *tiny_overrides(root, corpus, teacher),
            f"hydra.run.dir={run_dir}", *extra]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS / "integration"), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_killed_run_resumes_mid_epoch_with_the_unseen_batches(tiny_setup, tmp_path):
    common = ["technique=kd", "student=2L", "seed=11", "trainer.max_epochs=3", EVERY,
              "+callbacks.seen._target_=helpers.RecordBatches"]
    ref_log, killed_log, resumed_log = tmp_path / "ref.jsonl", tmp_path / "killed.jsonl", tmp_path / "resumed.jsonl"
    reference = run_tiny(tiny_setup, "kill_reference", *common, f"+callbacks.seen.path={ref_log}")
    steps_per_epoch = sum(1 for r in _records(ref_log) if r["epoch"] == 0)

    run_dir = _runs(tiny_setup) / "killed"
    proc = subprocess.Popen(_cli(tiny_setup, run_dir, *common, f"+callbacks.seen.path={killed_log}"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = steps_per_epoch + steps_per_epoch // 2 + 2  # mid-epoch 2, between two checkpoints
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if killed_log.exists() and any(r["step"] >= target for r in _records(killed_log)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt_step = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert steps_per_epoch < ckpt_step < 2 * steps_per_epoch and ckpt_step % steps_per_epoch  # mid-epoch 2

    relaunch = subprocess.run(_cli(tiny_setup, tmp_path / "relaunch", *common, f"+callbacks.seen.path={resumed_log}",
                                   "resume=true"), env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["train/optimizer_steps"] == reference["metrics"]["train/optimizer_steps"]
    assert results["metrics"]["test/acc"] == pytest.approx(reference["metrics"]["test/acc"], abs=0.01)
    # The resumed epoch continued with exactly the batches the uninterrupted run trained on after that step
    # (later epochs are reshuffled: their order need not match the uninterrupted run's).
    ref_after = [r["idx"] for r in _records(ref_log) if ckpt_step < r["step"] <= 2 * steps_per_epoch]
    resumed_after = [r["idx"] for r in _records(resumed_log) if r["epoch"] == 1]
    assert resumed_after == ref_after
    epoch_2 = [i for r in _records(killed_log) if r["epoch"] == 1 and r["step"] <= ckpt_step for i in r["idx"]]
    epoch_2 += [i for r in _records(resumed_log) if r["epoch"] == 1 for i in r["idx"]]
    assert sorted(epoch_2) == sorted(i for r in _records(ref_log) if r["epoch"] == 1 for i in r["idx"])
