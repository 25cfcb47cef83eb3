"""TinyBERT through the real runner runs its stages as ``task_distill.py`` does: the intermediate stage at a
constant LR, the prediction stage at its own peak LR with linear warm-up and decay."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_tiny


def test_intermediate_stage_keeps_a_constant_lr_and_prediction_stage_warms_up_and_decays(tiny_setup):
    results = run_tiny(tiny_setup, "tinybert_lr", "technique=tinybert", "student=2L", "trainer.max_epochs=2")
    assert results["stages"] == ["intermediate", "prediction"]
    run_dir = tiny_setup[0] / "outputs" / "runs" / "tinybert_lr"
    lrs = pd.read_csv(run_dir / "csv" / "metrics.csv")["lr-AdamW/pg1"].dropna().to_numpy()
    steps_intermediate = json.loads((run_dir / "stages" / "intermediate" / "done.json").read_text())["steps"]
    intermediate, prediction = lrs[:steps_intermediate], lrs[steps_intermediate:]
    assert len(intermediate) > 3 and len(prediction) > 3
    assert set(intermediate.round(12)) == {5e-5}  # schedule 'none' at --learning_rate's default
    assert prediction.max() == pytest.approx(3e-5, rel=0.1)  # the README's prediction-stage LR
    peak = int(prediction.argmax())
    assert peak >= 1 and prediction[0] < prediction.max()  # warm-up
    assert all(a >= b for a, b in zip(prediction[peak:], prediction[peak + 1:]))  # linear decay
    assert prediction[-1] < 0.5 * prediction.max()
