"""technique=meta_kd through the real runner on the tiny setup, with each quiz source: results.json says how
many training examples the student trained on and how big the quiz was; a bad quiz source is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_tiny

from slimnlp.techniques.meta_kd import is_quiz

REPO = Path(__file__).resolve().parents[2]


def _sizes(tiny_setup, name: str) -> dict[str, int]:
    split = json.loads((tiny_setup[0] / "outputs" / "runs" / name / "split.json").read_text())
    return split["subset_sizes"]


@pytest.mark.parametrize("source", ["train", "validation"])
def test_meta_kd_run_with_each_quiz_source(tiny_setup, source):
    name = f"meta_kd_{source}"
    results = run_tiny(
        tiny_setup,
        name,
        "technique=meta_kd",
        "student=2L",
        "trainer.max_epochs=1",
        f"technique.quiz_source={source}",
    )
    m, sizes = results["metrics"], _sizes(tiny_setup, name)
    if source == "validation":
        assert m["train/student_examples"] == sizes["train"]
        assert m["train/quiz_examples"] == sizes["validation"]
    else:
        held = int(is_quiz(torch.arange(sizes["train"]), 0.1).sum())
        assert 0 < held < sizes["train"]
        assert m["train/quiz_examples"] == held
        assert m["train/student_examples"] == sizes["train"] - held
    assert m["train/quiz_batches_per_step"] == -(-m["train/quiz_examples"] // 16)  # data.batch_size=16
    assert 0.0 <= m["test/acc"] <= 1.0 and m["train/optimizer_steps"] > 0
    assert results["config"]["technique"]["quiz_source"] == source


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is lent)")
def test_meta_kd_gpu_bf16_run(tiny_setup):
    """The second-order pilot under CUDA bf16-mixed autocast, K quiz batches drawn per step."""
    results = run_tiny(
        tiny_setup,
        "meta_kd_gpu",
        "technique=meta_kd",
        "student=2L",
        "trainer=gpu",
        "trainer.max_epochs=1",
        "technique.quiz_batches=2",
    )
    m = results["metrics"]
    assert results["config"]["trainer"]["precision"] == "bf16-mixed"
    assert m["train/quiz_batches_per_step"] == 2 and 0.0 <= m["test/acc"] <= 1.0


def test_bad_quiz_source_is_one_line(tmp_path):
    env = {**os.environ, "SLIMNLP_ROOT": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "technique=meta_kd", "technique.quiz_source=dev"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "technique.quiz_source='dev' is invalid: one of train, validation" in errors[0]
