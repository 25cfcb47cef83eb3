"""The runner contract, through the real runner on the tiny setup: students of any shape save and reload,
techniques declare their needs, post-training techniques get calibration batches, stages own their
optimizer, techniques add optimizer groups, the schedule group is read, model checks come first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import run_tiny, tiny_overrides
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from slimnlp.artifacts import artifact_bytes, load_student
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.factorized import FactorizedLinear

DUMMY = "dummy_techniques"
REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def _run_dir(tiny_setup, name):
    return tiny_setup[0] / "outputs" / "runs" / name


@pytest.mark.parametrize("shape", ["heads", "factorized", "shared"])
def test_students_of_any_shape_are_saved_tested_and_measured_as_reloaded(tiny_setup, shape):
    results = run_tiny(tiny_setup, f"shape_{shape}", "technique=finetune", f"technique._target_={DUMMY}.ExportShape",
                       f"+technique.shape={shape}", "student=2L", "trainer.max_epochs=2")
    m, student_dir = results["metrics"], _run_dir(tiny_setup, f"shape_{shape}") / "student"
    reloaded = load_student(student_dir)
    layers = structure.encoder_layers(reloaded)
    if shape == "heads":
        assert layers[0].attention.self.query.out_features == 16  # 2 of 4 heads of 8 dims
    elif shape == "factorized":
        assert isinstance(layers[0].intermediate.dense, FactorizedLinear)
    else:
        assert layers[0] is layers[1]
    assert m["eff/disk_bytes"] == artifact_bytes(student_dir)  # every file the folder ships
    assert m["eff/params"] == sum(p.numel() for p in reloaded.parameters())  # shared weights counted once
    # test/* are the reloaded artifact's numbers: recomputing them from the folder gives the same accuracy
    assert m["test/acc"] == pytest.approx(_accuracy(reloaded, student_dir, results), abs=1e-6)


def _accuracy(model, student_dir, results) -> float:
    """Test accuracy of ``model`` on the run's own test split, computed here from scratch."""
    cfg = OmegaConf.create(results["config"])
    dm = instantiate(cfg.data, tokenizer=AutoTokenizer.from_pretrained(str(student_dir)))
    dm.prepare_data()
    dm.setup("test")
    correct = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            logits = model(**model_inputs(batch)).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    return correct / total


def test_a_saved_student_of_any_shape_starts_the_next_run(tiny_setup):
    run_tiny(tiny_setup, "pruned_first", "technique=finetune", f"technique._target_={DUMMY}.ExportShape",
             "+technique.shape=heads", "student=2L", "trainer.max_epochs=1")
    results = run_tiny(tiny_setup, "pruned_then_kd", "technique=kd", "student=path",
                       f"student.path={_run_dir(tiny_setup, 'pruned_first')}", "trainer.max_epochs=1")
    before, after = load_student(_run_dir(tiny_setup, "pruned_first")), load_student(results["artifacts"]["student_dir"])
    assert structure.encoder_layers(after)[0].attention.self.query.out_features == 16  # still pruned
    assert results["metrics"]["train/optimizer_steps"] > 0
    query_before = structure.encoder_layers(before)[0].attention.self.query.weight
    assert not torch.equal(query_before, structure.encoder_layers(after)[0].attention.self.query.weight)  # trained


def test_shared_layers_are_stored_once(tiny_setup):
    plain = run_tiny(tiny_setup, "plain_2L", "technique=finetune", "student=2L", "trainer.max_epochs=1")
    shared = run_tiny(tiny_setup, "shared_2L", "technique=finetune", f"technique._target_={DUMMY}.ExportShape",
                      "+technique.shape=shared", "student=2L", "trainer.max_epochs=1")
    one_layer = sum(p.numel() * 4 for p in structure.encoder_layers(load_student(_run_dir(tiny_setup, "plain_2L")))[0].parameters())
    saved = plain["metrics"]["eff/disk_bytes"] - shared["metrics"]["eff/disk_bytes"]
    assert saved == pytest.approx(one_layer, rel=0.05)


def test_post_training_technique_through_train_py(tiny_setup):
    """Through ``python train.py`` itself: calibration batches on the technique's device, no optimizer step."""
    root, corpus, teacher = tiny_setup
    run_dir = _run_dir(tiny_setup, "oneshot")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "integration"), str(TESTS)])}
    cli = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *tiny_overrides(root, corpus, teacher), "technique=finetune",
         f"technique._target_={DUMMY}.OneShotMagnitudePruning", "+technique.sparsity=0.5", "student=2L",
         "calibration.num_samples=40", "calibration.batch_size=8", f"hydra.run.dir={run_dir}"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert m["compress/calibration_examples"] == 40
    assert m["compress/on_module_device"] == 1.0
    assert m["compress/prepared_sparsity"] == 0.5  # prepare_student ran after the constructor set it
    assert m["compress/sparsity"] == pytest.approx(0.5, abs=0.01)
    assert m["train/optimizer_steps"] == 0
    assert not list((_run_dir(tiny_setup, "oneshot") / "checkpoints").glob("*.ckpt"))
    reloaded = load_student(_run_dir(tiny_setup, "oneshot"))
    weights = [mod.weight for mod in structure.encoder_layers(reloaded).modules() if isinstance(mod, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)  # the artifact is what compress() produced
    assert "val/acc" in m and "test/acc" in m


def test_stages_own_their_lr_and_techniques_add_optimizer_groups(tiny_setup):
    run_tiny(tiny_setup, "groups", "technique=finetune", f"technique._target_={DUMMY}.TwoStageOwnGroups",
             "student=2L", "trainer.max_epochs=1", "optim.optimizer.lr=1e-3")
    log = pd.read_csv(_run_dir(tiny_setup, "groups") / "csv" / "metrics.csv")
    lrs = log.dropna(subset=["lr-AdamW/pg1"])
    groups = [c for c in log.columns if c.startswith("lr-AdamW/pg")]
    assert len(groups) == 3  # decay, no decay, and the technique's own group
    own = log[groups[-1]].dropna()
    assert own.max() == pytest.approx(0.05)  # its own peak LR, scheduled like the others
    steps_per_stage = len(lrs) // 2
    first, second = lrs["lr-AdamW/pg1"].iloc[:steps_per_stage], lrs["lr-AdamW/pg1"].iloc[steps_per_stage:]
    assert first.max() == pytest.approx(1e-3, rel=0.05) and first.nunique() > 3  # warm-up and linear decay
    assert second.nunique() == 1 and second.iloc[0] == pytest.approx(2e-4)  # the stage's constant LR


def test_the_schedule_group_reaches_the_techniques_that_ramp(tiny_setup):
    run_tiny(
        tiny_setup,
        "prune_const",
        "technique=magnitude_pruning",
        "student=2L",
        "technique.sparsity=0.5",
        "technique.distill=false",
        "schedule=constant",
        "schedule.end=0.5",
        "trainer.max_epochs=1",
    )
    log = pd.read_csv(_run_dir(tiny_setup, "prune_const") / "csv" / "metrics.csv")
    kept = log["prune/kept"].dropna()
    assert kept.round(2).nunique() == 1  # schedule=constant: the same level from the first step
    assert kept.iloc[0] == pytest.approx(0.75, abs=0.01)  # schedule.end=0.5: half of the 0.5 target
    with pytest.raises(ConfigError, match="schedule.*kd.*ramps nothing"):
        run_tiny(tiny_setup, "kd_schedule", "technique=kd", "schedule=linear")


def test_model_checks_fail_before_the_teacher_is_fine_tuned(tiny_setup):
    teachers = tiny_setup[0] / "outputs" / "teachers"
    before = sorted(teachers.rglob("config.json")) if teachers.exists() else []
    with pytest.raises(ConfigError, match="student.num_layers=3"):
        run_tiny(tiny_setup, "theseus_3L", "technique=theseus", "student=3L", "teacher.finetune.seed=999")
    after = sorted(teachers.rglob("config.json")) if teachers.exists() else []
    assert after == before  # no teacher was fine-tuned for the doomed run


def test_requirements_are_what_the_runner_reads(tiny_setup):
    from slimnlp.techniques.meta_kd import MetaDistil
    from slimnlp.techniques.multi_teacher import MultiTeacherKD
    from slimnlp.techniques.tinybert import TinyBERT

    assert TinyBERT.requirements(stage="prediction").cacheable_teacher_logits
    assert TinyBERT.requirements(stage="intermediate").find_unused_parameters
    assert not TinyBERT.requirements(stage="both").cacheable_teacher_logits
    assert MultiTeacherKD.requirements(hidden_weight=0.0).extra_teachers
    assert not MultiTeacherKD.requirements(hidden_weight=1.0).cacheable_teacher_logits
    assert not MetaDistil.requirements().ddp
    results = run_tiny(tiny_setup, "tinybert", "technique=tinybert", "student=2L", "trainer.max_epochs=1")
    assert results["stages"] == ["intermediate", "prediction"]
