"""Models that learned nothing, through the real runner: a teacher fine-tuned on shuffled labels is refused in
one line and never cached, a ``teacher.checkpoint`` that knows nothing is refused on validation, a student
that predicts one label is flagged in results.json and in the printed summary, and the small-data rule
gives every stage ``min_steps`` optimizer steps."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_tiny, tiny_overrides
from transformers import AutoModelForSequenceClassification, AutoTokenizer

REPO = Path(__file__).resolve().parents[2]
# A gate no teacher trained on noise passes on 30 validation examples, and the real tiny teacher does.
STRICT_GATE = "teacher.finetune.min_gain=0.3"


def _shuffled_copy(corpus: Path, path: Path) -> Path:
    """The tiny corpus with its labels permuted: the same texts and label counts, no signal."""
    with corpus.open() as f:
        rows = list(csv.DictReader(f))
    labels = [row["label"] for row in rows]
    random.Random(1).shuffle(labels)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": row["text"], "label": label} for row, label in zip(rows, labels))
    return path


def _cli(root: Path, corpus: Path, teacher: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *tiny_overrides(root, corpus, teacher), f"hydra.run.dir={run_dir}",
         "technique=kd", "student=2L", "trainer.max_epochs=1", *extra],
        capture_output=True, text=True, timeout=600, check=False,
    )


def test_a_teacher_fine_tuned_on_shuffled_labels_is_refused_in_one_line_and_not_cached(tiny_setup, tmp_path):
    root, corpus, teacher = tiny_setup
    shuffled = _shuffled_copy(corpus, tmp_path / "shuffled.csv")
    refused = _cli(root, shuffled, teacher, tmp_path / "refused", STRICT_GATE, "data.task_name=tiny_shuffled")
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("error: teacher.finetune: the fine-tuned tiny_bert ")
    assert "did not learn tiny_shuffled in 150 optimizer steps (" in error
    assert "(predicts a single label for every val example)" in error or "does not beat always predicting" in error
    assert "), so it was not cached: change the recipe, e.g. teacher.finetune.lr (now 0.0005), " \
           "teacher.finetune.epochs (now 10) or teacher.finetune.min_steps (now 0)" in error
    assert "Traceback" not in refused.stderr
    teachers = root / "outputs" / "teachers" / "tiny_bert" / "tiny_shuffled"
    assert not [p for p in teachers.iterdir() if (p / "config.json").is_file()]  # nothing published
    assert not list(teachers.glob("*.partial"))  # nor its checkpoints left behind
    (record,) = teachers.glob("*.refused.json")
    metrics = json.loads(record.read_text())["metrics"]
    assert metrics["val/acc"] < metrics["val/majority_acc"] + 0.3
    assert not (tmp_path / "refused" / "results.json").exists()  # no student was distilled from it

    # The same gate on the real labels lets the teacher teach: the refusal is about the labels, not the gate.
    accepted = _cli(root, corpus, teacher, tmp_path / "accepted", STRICT_GATE)
    assert accepted.returncode == 0, accepted.stderr[-3000:]


def test_a_teacher_checkpoint_that_knows_nothing_is_refused_on_validation(tiny_setup, tmp_path):
    root, corpus, teacher = tiny_setup
    untrained = tmp_path / "untrained_teacher"  # the pretrained tiny BERT with a fresh head, never fine-tuned
    AutoModelForSequenceClassification.from_pretrained(str(teacher), num_labels=3).save_pretrained(untrained)
    AutoTokenizer.from_pretrained(str(teacher)).save_pretrained(untrained)
    out = _cli(root, corpus, teacher, tmp_path / "run", STRICT_GATE, f"teacher.checkpoint={untrained}")
    assert out.returncode == 2, out.stderr[-3000:]
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: teacher.checkpoint: the teacher at {untrained} does not know tiny (")
    assert error.endswith("): use a teacher fine-tuned on this task (or leave teacher.checkpoint unset to "
                          "fine-tune one)")


def test_a_student_that_predicts_one_label_is_flagged_in_results_summary_and_wandb(tiny_setup, capsys):
    results = run_tiny(tiny_setup, "collapsed", "technique=finetune",
                       "technique._target_=dummy_techniques.CollapseToOneLabel", "+technique.label=2",
                       "student=2L", "trainer.max_epochs=1", "logger=wandb")
    m = results["metrics"]
    assert m["test/labels_predicted"] == 1.0 and m["test/top_label_share"] == 1.0
    assert m["teacher/test/labels_predicted"] > 1.0  # the teacher learned the tiny task
    # The stratified tiny test split holds 10 examples of each label: always "2" scores 1/3, as does the majority.
    assert m["test/acc"] == pytest.approx(1 / 3) and m["test/majority_acc"] == pytest.approx(1 / 3)
    assert "student predicts a single label for every test example" in results["warnings"]
    assert not [w for w in results["warnings"] if w.startswith("teacher")]
    saved = json.loads((Path(results["run_dir"]) / "results.json").read_text())
    assert saved["warnings"] == results["warnings"]
    assert "WARNING: student predicts a single label for every test example" in capsys.readouterr().out
    # The W&B summary holds the list as JSON (the console capture has the lines without brackets).
    (offline,) = (Path(results["run_dir"]) / "wandb").glob("offline-run-*")
    assert b'["student predicts a single label for every ' in next(offline.glob("*.wandb")).read_bytes()


def test_a_healthy_run_has_no_warnings_and_records_each_splits_majority_rate(tiny_setup):
    results = run_tiny(tiny_setup, "healthy", "technique=kd", "student=2L", "trainer.max_epochs=10")
    m = results["metrics"]
    assert results["warnings"] == []
    assert m["test/acc"] > m["test/majority_acc"] + 0.01 and m["teacher/test/acc"] > m["test/majority_acc"] + 0.01
    assert {"val/majority_acc", "val/majority_f1", "test/majority_acc", "test/majority_f1"} <= set(m)
    assert m["test/labels_predicted"] > 1 and m["teacher/test/labels_predicted"] > 1


def test_small_data_gets_min_steps_optimizer_steps_for_student_and_teacher(tiny_setup):
    # 240 training examples at batch 16: 15 steps an epoch. One epoch asked; min_steps=40 makes it 3 (45 steps).
    results = run_tiny(tiny_setup, "min_steps", "technique=finetune", "student=2L", "trainer.max_epochs=1",
                       "min_steps=40", "teacher.finetune.epochs=1", "teacher.finetune.min_steps=100",
                       "teacher.finetune.seed=31")
    assert results["metrics"]["train/optimizer_steps"] == 45
    teacher = json.loads((Path(results["artifacts"]["teacher_dir"]) / "results.json").read_text())
    assert teacher["metrics"]["train/optimizer_steps"] == 105  # 7 epochs
    assert teacher["recipe"]["trainer"]["max_epochs"] == 7
