"""PABEE through train.py on the tiny setup: the trained student is saved, reloaded and tested with early exit
(``test/avg_exit_layer``); technique=early_exit re-evaluates that saved run at another patience without
training; bad input fails in one line before any training."""

from __future__ import annotations

import pytest
from helpers import run_tiny

from slimnlp.artifacts import load_student
from slimnlp.errors import ConfigError
from slimnlp.modules.early_exit import exit_encoder


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pabee_trains_and_exits_early_and_early_exit_sets_other_patiences_on_the_saved_run(tiny_setup, pooling):
    trained = run_tiny(tiny_setup, f"pabee_{pooling}", "technique=pabee", "technique.patience=1", "student=4L",
                       "student.init_from=finetuned", "trainer.max_epochs=3", f"technique.exit_pooling={pooling}")
    m = trained["metrics"]
    saved = exit_encoder(load_student(f"{trained['run_dir']}/student"))
    assert saved.patience == 1 == m["compress/patience"] and saved.pooling == pooling
    assert 2 <= m["test/avg_exit_layer"] < 4  # patience 1: layer 2 at the earliest; trained layers agree early
    assert 2 <= m["val/avg_exit_layer"] < 4
    assert m["test/acc"] > 0.5  # three balanced classes: chance is 1/3
    assert m["eff/flops"] < m["teacher/eff/flops"]  # same depth as the teacher: the timed example left early
    full = run_tiny(tiny_setup, f"pabee_{pooling}_p4", "technique=early_exit", "technique.patience=4", "student=path",
                    f"student.path={trained['run_dir']}")["metrics"]
    assert full["train/optimizer_steps"] == 0
    assert full["test/avg_exit_layer"] == 4 and full["compress/patience"] == 4
    assert full["eff/flops"] == pytest.approx(m["teacher/eff/flops"], rel=0.01)  # every layer, as the teacher


@pytest.mark.parametrize("overrides, pattern", [
    (["technique.patience=0"], r"technique\.patience=0 .*positive"),
    (["technique.patience=5"], r"technique\.patience=5 .*4 layers"),
    (["technique.exit_pooling=max"], r"technique\.exit_pooling='max' .*cls or mean"),
])
def test_bad_input_fails_in_one_line_before_training(tiny_setup, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        run_tiny(tiny_setup, "pabee_bad", "technique=pabee", "student=4L", *overrides)
    assert "\n" not in str(err.value)
    assert not (tiny_setup[0] / "outputs" / "runs" / "pabee_bad" / "checkpoints").exists()
