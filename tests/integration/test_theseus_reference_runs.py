"""BERT-of-Theseus through the real runner trains as the reference ``run_glue.py`` does: one stage, one optimizer
and one LR schedule, the replacement rate ``min(1, k·t + b)`` per optimizer step with successor-only fine-tuning
as the tail of the same run, successors initialised from the first L_S layers of the fine-tuned teacher; and the
``_student_`` request Theseus introduced, as PKD and DistilBERT use it for their papers' student initialisation."""

from __future__ import annotations

from itertools import pairwise

import pandas as pd
import pytest
import torch
from helpers import compose_run_config, run_tiny, tiny_overrides
from lightning.pytorch.callbacks import Callback
from transformers import BertModel

from slimnlp.build import plan


class SnapshotAtTrainStart(Callback):
    """Saves what training starts from: the student's and the (fine-tuned) teacher's weights, and how many
    optimizers and LR schedulers the Trainer holds."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(
            {
                "student": {k: v.detach().clone() for k, v in pl_module.student.state_dict().items()},
                "teacher": {k: v.detach().clone() for k, v in pl_module.teacher.state_dict().items()},
                "optimizers": len(trainer.optimizers),
                "lr_schedulers": len(trainer.lr_scheduler_configs),
                "total_steps": int(trainer.estimated_stepping_batches),
            },
            self.path,
        )


def _layer(state: dict[str, torch.Tensor], prefix: str, i: int) -> dict[str, torch.Tensor]:
    head = f"{prefix}encoder.layer.{i}."
    return {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_stage_one_optimizer_reference_rate_and_finetuned_first_layer_init(tiny_setup):
    root, _, pretrained_dir = tiny_setup
    snapshot = root / "theseus_start.pt"
    b, k = 0.3, 0.1  # p = 1 from step 7: the successor-only tail is part of the same run
    results = run_tiny(
        tiny_setup,
        "theseus_ref",
        "technique=theseus",
        "student=2L",
        "trainer.max_epochs=2",
        f"technique.replacing_rate={b}",
        f"technique.scheduler_linear_k={k}",
        f"+callbacks.snap._target_={__name__}.SnapshotAtTrainStart",
        f"+callbacks.snap.path={snapshot}",
    )
    assert results["stages"] == ["train"]
    assert {results["config"]["student"][key] for key in ("init", "init_from")} == {"first", "finetuned"}
    start = torch.load(snapshot, weights_only=False)
    assert start["optimizers"] == 1 and start["lr_schedulers"] == 1
    total = start["total_steps"]
    assert results["metrics"]["train/optimizer_steps"] == total  # no second stage, no doubled budget

    # Successor i starts as fine-tuned teacher layer i (not the skip map's layers, not the pretrained weights).
    pretrained = BertModel.from_pretrained(pretrained_dir).state_dict()
    for i in range(2):
        successor = _layer(start["student"], "bert.", i)
        assert _same(successor, _layer(start["teacher"], "bert.", i))
        assert not _same(successor, _layer(pretrained, "", i))  # the teacher was fine-tuned first
    assert not _same(_layer(start["student"], "bert.", 0), _layer(start["teacher"], "bert.", 1))

    log = pd.read_csv(root / "outputs" / "runs" / "theseus_ref" / "csv" / "metrics.csv")
    rates = log.dropna(subset=["theseus/replace_rate"])
    # A training step is logged under the optimizer steps before it, t: the count the rate was read at, as the
    # reference's scheduler counts (stepped after each optimizer.step()).
    t = rates["step"].to_numpy()
    assert len(rates) == total and list(t) == list(range(total))
    assert rates["theseus/replace_rate"].to_numpy() == pytest.approx([min(1.0, k * s + b) for s in t])
    full = int((rates["theseus/replace_rate"] == 1.0).to_numpy().argmax())
    assert 0 < full < total - 3  # ramp, then successor-only fine-tuning in the same run

    # One LR schedule over the whole run: one warm-up, then one linear decay to (almost) zero.
    lrs = log["lr-AdamW/pg1"].dropna().to_numpy()
    assert len(lrs) == total
    peak = int(lrs.argmax())
    assert all(a <= c for a, c in pairwise(lrs[: peak + 1]))
    assert all(a >= c for a, c in pairwise(lrs[peak:]))
    assert lrs[-1] < 0.2 * lrs.max()


def test_constant_scheduler_switches_to_one_in_the_same_run(tiny_setup):
    results = run_tiny(
        tiny_setup,
        "theseus_const",
        "technique=theseus",
        "student=2L",
        "trainer.max_epochs=1",
        "technique.scheduler=constant",
        "technique.replacing_rate=0.5",
        "technique.steps_for_replacing=4",
    )
    assert results["stages"] == ["train"]
    log = pd.read_csv(tiny_setup[0] / "outputs" / "runs" / "theseus_const" / "csv" / "metrics.csv")
    rates = log.dropna(subset=["theseus/replace_rate"])
    t = rates["step"].to_numpy()
    assert rates["theseus/replace_rate"].tolist() == [0.5 if s < 4 else 1.0 for s in t]
    assert 1.0 in rates["theseus/replace_rate"].tolist()


def test_the_technique_asks_for_its_student_and_the_command_line_wins(tiny_setup):
    root, corpus, teacher = tiny_setup
    base = [*tiny_overrides(root, corpus, teacher), "technique=theseus"]

    def student_after_plan(*extra: str):
        cfg = compose_run_config([*base, *extra], root / "outputs" / "runs" / "theseus_plan")
        plan(cfg)
        return cfg.student

    student = student_after_plan("student=2L")
    assert (student.init, student.init_from) == ("first", "finetuned")
    student = student_after_plan("student=2L", "student.init=skip")
    assert (student.init, student.init_from) == ("skip", "finetuned")
    student = student_after_plan("student=2L", "student.init_from=pretrained")
    assert (student.init, student.init_from) == ("first", "pretrained")
    # other builders are built as configured
    assert "init" not in student_after_plan("student=path", f"student.path={teacher}")
    kd = compose_run_config(
        [*tiny_overrides(root, corpus, teacher), "technique=kd", "student=2L"],
        root / "outputs" / "runs" / "kd_plan",
    )
    plan(kd)
    assert (kd.student.init, kd.student.init_from) == ("skip", "pretrained")  # no request: untouched


@pytest.mark.parametrize(
    "override, key",
    [
        ("technique.scheduler=cosine", "technique.scheduler"),
        ("technique.replacing_rate=1.2", "technique.replacing_rate"),
        ("technique.scheduler_linear_k=0", "technique.scheduler_linear_k"),
        ("technique.steps_for_replacing=-5", "technique.steps_for_replacing"),
    ],
)
def test_bad_theseus_hparams_fail_before_anything_trains(tiny_setup, override, key):
    from slimnlp.errors import ConfigError

    root, corpus, teacher = tiny_setup
    cfg = compose_run_config(
        [*tiny_overrides(root, corpus, teacher), "technique=theseus", "student=2L", override],
        root / "outputs" / "runs" / "theseus_bad",
    )
    with pytest.raises(ConfigError, match=f"^{key}=") as err:
        plan(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("technique, init", [("pkd", "first"), ("distilbert", "distilbert")])
def test_pkd_and_distilbert_ask_for_their_papers_student_init(tiny_setup, technique, init):
    root, corpus, teacher = tiny_setup
    cfg = compose_run_config([*tiny_overrides(root, corpus, teacher), f"technique={technique}", "student=2L"],
                             root / "outputs" / "runs" / f"{technique}_plan")
    plan(cfg)
    assert (cfg.student.init, cfg.student.init_from) == (init, "pretrained")


def test_a_pkd_run_starts_from_the_teachers_first_layers(tiny_setup):
    """Through train.py: the recorded config names init=first and student layer 1 starts as pretrained layer 1
    (init=skip would have copied layer 3 of the 4-layer tiny teacher)."""
    root, _, pretrained_dir = tiny_setup
    snapshot = root / "pkd_start.pt"
    results = run_tiny(tiny_setup, "pkd_init", "technique=pkd", "student=2L", "trainer.max_epochs=1",
                       f"+callbacks.snap._target_={__name__}.SnapshotAtTrainStart",
                       f"+callbacks.snap.path={snapshot}")
    assert results["config"]["student"]["init"] == "first"
    start, pretrained = torch.load(snapshot, weights_only=False), BertModel.from_pretrained(pretrained_dir).state_dict()
    assert _same(_layer(start["student"], "bert.", 1), _layer(pretrained, "", 1))
    assert not _same(_layer(start["student"], "bert.", 1), _layer(pretrained, "", 3))
