"""The step budget rule (``slimnlp.budget``): ``trainer.max_steps`` is the run's number of student optimizer steps,
split between a technique's stages, so a one-stage and a two-stage technique train for the same number of steps."""

from __future__ import annotations

import json

import pytest
from helpers import run_tiny

from slimnlp.budget import split_steps


def test_split_steps_is_proportional_and_exact():
    assert split_steps(250, [1.0, 1.0]) == [125, 125]
    assert split_steps(7, [1.0, 1.0]) == [4, 3]
    assert split_steps(10, [3.0, 1.0]) == [8, 2]
    assert split_steps(2, [100.0, 1.0]) == [1, 1]  # every stage trains
    with pytest.raises(ValueError, match="cannot give each"):
        split_steps(1, [1.0, 1.0])


def test_one_and_two_stage_techniques_take_the_same_budget(tiny_setup):
    budget = ["trainer.max_steps=21", "trainer.max_epochs=1"]  # 240 training examples / 16 = 15 steps per epoch
    kd = run_tiny(tiny_setup, "budget_kd", "technique=kd", "student=2L", *budget)
    tinybert = run_tiny(tiny_setup, "budget_tinybert", "technique=tinybert", "student=2L", *budget)
    # epochs do not cut a budget short: 21 steps are more than one epoch of the tiny corpus
    assert kd["metrics"]["train/optimizer_steps"] == tinybert["metrics"]["train/optimizer_steps"] == 21
    done = tiny_setup[0] / "outputs" / "runs" / "budget_tinybert" / "stages" / "intermediate" / "done.json"
    assert json.loads(done.read_text())["steps"] == 11  # 21 split evenly between the two stages: 11 + 10
    for results in (kd, tinybert):
        assert "val/acc" in results["metrics"] and "test/acc" in results["metrics"]
