"""Scale-out safety, as a user would run it: DDP on two CPU processes writes one results.json and one teacher,
and matches a single-process run at the same global batch; two processes that need the same teacher at once
fine-tune it once; the teacher's cache key holds its recipe and nothing of the student's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_run_config, run_tiny, tiny_overrides

from slimnlp.teachers import cache_folder

REPO = Path(__file__).resolve().parents[2]


def _cli(tiny_setup, run_dir: Path, *extra: str) -> list[str]:
    root, corpus, teacher = tiny_setup
    return [sys.executable, str(REPO / "train.py"), *tiny_overrides(root, corpus, teacher),
            f"hydra.run.dir={run_dir}", *extra]


def _teachers(tiny_setup, seed: int) -> list[Path]:
    return sorted((tiny_setup[0] / "outputs" / "teachers").glob(f"*/*/seed{seed}-*"))


def test_ddp_on_two_cpu_processes_matches_one_process(tiny_setup):
    common = ["technique=kd", "student=2L", "trainer.max_epochs=4", "teacher.finetune.seed=77",
              "teacher.finetune.batch_size=16"]
    run_dir = tiny_setup[0] / "outputs" / "runs" / "ddp2"
    ddp = subprocess.run(
        _cli(tiny_setup, run_dir, *common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
             "trainer.precision=32-true", "data.batch_size=8"),
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert len(list(run_dir.rglob("results.json"))) == 1
    assert len(_teachers(tiny_setup, 77)) == 1  # rank 0 fine-tuned it; rank 1 loaded it
    distributed = json.loads((run_dir / "results.json").read_text())["metrics"]

    single = run_tiny(tiny_setup, "ddp_reference", *common, "data.batch_size=16")["metrics"]
    assert len(_teachers(tiny_setup, 77)) == 1  # the same teacher: DDP does not change the teacher's recipe
    assert distributed["train/optimizer_steps"] == single["train/optimizer_steps"]  # same global batch
    # Different shuffles (DistributedSampler), same data, steps and global batch: within 5 points.
    assert distributed["test/acc"] == pytest.approx(single["test/acc"], abs=0.05)
    assert distributed["teacher/test/acc"] == pytest.approx(single["teacher/test/acc"], abs=0.05)


def test_ddp_finds_unused_parameters_where_the_technique_says_so(tiny_setup):
    """TinyBERT's intermediate stage never uses the pooler and classifier: plain DDP would fail on them."""
    run_dir = tiny_setup[0] / "outputs" / "runs" / "ddp_tinybert"
    ddp = subprocess.run(
        _cli(tiny_setup, run_dir, "technique=tinybert", "student=2L", "technique.intermediate_epochs=1",
             "technique.prediction_epochs=1", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
             "trainer.precision=32-true", "data.batch_size=8"),
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["stages"] == ["intermediate", "prediction"]


def test_two_processes_needing_one_teacher_fine_tune_it_once(tiny_setup, tmp_path):
    common = ["technique=finetune", "student=2L", "trainer.max_epochs=1", "teacher.finetune.seed=123"]
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    procs = [subprocess.Popen(_cli(tiny_setup, tmp_path / f"worker{i}", *common), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
    assert len(_teachers(tiny_setup, 123)) == 1
    assert sum("fine-tuning it first" in out for out in outputs) == 1
    assert sum("reusing the cached fine-tuned" in out for out in outputs) == 1


def _folder(tiny_setup, tmp_path, *extra: str) -> Path:
    root, corpus, teacher = tiny_setup
    cfg = compose_run_config([*tiny_overrides(root, corpus, teacher), *extra], tmp_path / "run")
    return cache_folder(cfg, "data-fingerprint", 240)


@pytest.mark.parametrize("student_only", ["optim.optimizer.lr=3e-3", "optim.lr_scheduler.name=cosine", "seed=1",
                                          "data.max_train_samples=100", "technique=pkd", "trainer.max_epochs=3",
                                          "trainer.max_steps=7", "trainer.log_every_n_steps=3", "student=3L",
                                          "min_steps=1000", "warnings.min_gain=0.2",
                                          "teacher.finetune.min_gain=0.2",  # decides publishing, not training
                                          "teacher.finetune.min_steps=100"])  # not binding: 10 epochs = 150 steps
def test_what_trains_the_student_never_changes_the_teacher(tiny_setup, tmp_path, student_only):
    assert _folder(tiny_setup, tmp_path, student_only) == _folder(tiny_setup, tmp_path)


@pytest.mark.parametrize("teacher_change", ["teacher.finetune.lr=1e-3", "teacher.finetune.epochs=3",
                                            "teacher.finetune.seed=5", "teacher.finetune.batch_size=8",
                                            "teacher.finetune.gradient_clip_val=0.5",
                                            "teacher.finetune.accumulate_grad_batches=2",
                                            "teacher.finetune.optimizer.weight_decay=0.0",
                                            "teacher.finetune.lr_scheduler.name=constant",
                                            "trainer.limit_train_batches=0.5", "trainer.val_check_interval=0.5",
                                            "trainer.deterministic=true",
                                            "teacher.finetune.min_steps=1000"])  # binding: 67 epochs
def test_what_trains_the_teacher_never_reuses_an_old_one(tiny_setup, tmp_path, teacher_change):
    assert _folder(tiny_setup, tmp_path, teacher_change) != _folder(tiny_setup, tmp_path)


def test_seeds_share_one_teacher_in_real_runs(tiny_setup):
    first = run_tiny(tiny_setup, "seed_a", "technique=finetune", "student=2L", "trainer.max_epochs=1", "seed=1")
    second = run_tiny(tiny_setup, "seed_b", "technique=finetune", "student=2L", "trainer.max_epochs=1", "seed=2")
    assert first["artifacts"]["teacher_dir"] == second["artifacts"]["teacher_dir"]
    assert first["metrics"]["test/acc"] != second["metrics"]["test/acc"] or first["metrics"]["val/loss"] != second["metrics"]["val/loss"]
