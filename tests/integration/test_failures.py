"""Failures stay contained: a crashed run closes its loggers (W&B marked failed), a failed job of a multirun
lets the others finish, and a fine-tuned teacher of another task is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_tiny, tiny_overrides
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from slimnlp.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def test_a_crashed_run_marks_its_wandb_run_failed(tiny_setup, monkeypatch):
    import wandb
    from wandb.sdk.wandb_run import Run

    exit_codes, finish = [], Run.finish

    def spy(self, *args, **kwargs):
        exit_codes.append(kwargs.get("exit_code"))
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(Run, "finish", spy)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_tiny(tiny_setup, "wandb_crash", "technique=kd", "student=2L", "logger=wandb", "trainer.max_epochs=1",
                 "+callbacks.crash._target_=helpers.CrashAtStep", "+callbacks.crash.step=3")
    assert exit_codes == [1]
    assert wandb.run is None  # not left open for the next run in this process


def test_a_failed_job_does_not_stop_the_multirun(tiny_setup, tmp_path):
    root, corpus, teacher = tiny_setup
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "integration"), str(TESTS)])}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *tiny_overrides(root, corpus, teacher), "technique=kd",
         "student=2L", "trainer.max_epochs=1", "+callbacks.crash._target_=helpers.CrashAtStep",
         "+callbacks.crash.step=2,100000", f"hydra.sweep.dir={sweep_dir}"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failed = list(sweep_dir.rglob("failed.json"))
    finished = list(sweep_dir.rglob("results.json"))
    assert len(failed) == 1 and "simulated crash" in json.loads(failed[0].read_text())["error"]
    assert len(finished) == 1 and failed[0].parent != finished[0].parent


def test_a_teacher_checkpoint_of_other_labels_is_refused(tiny_setup, tmp_path, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        id2label={0: "positive", 1: "neutral", 2: "negative"})  # the task's labels, reversed
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "other_task")
    with pytest.raises(ConfigError, match=r"teacher.checkpoint=.*labels \['negative', 'neutral', 'positive'\]"):
        run_tiny(tiny_setup, "wrong_labels", "technique=kd", "student=2L", f"teacher.checkpoint={tmp_path / 'other_task'}")
