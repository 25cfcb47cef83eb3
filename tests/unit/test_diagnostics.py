"""The majority-class baseline, the prediction spread, the warnings, and the small-data step rule."""

from __future__ import annotations

import pytest
import torch

from slimnlp.budget import epochs_for_min_steps, steps_per_epoch
from slimnlp.diagnostics import (
    learned_nothing,
    majority_baselines,
    majority_class_metrics,
    model_warnings,
    noise_band,
)
from slimnlp.metrics.classification import metric_collection
from slimnlp.techniques.base import TaskInfo


class _Splits:
    """What ``majority_baselines`` reads off a datamodule: ``datasets[name]["labels"]``."""

    def __init__(self, **splits: list[int]) -> None:
        self.datasets = {name: {"labels": torch.tensor(labels)} for name, labels in splits.items()}


def test_majority_rate_equals_the_hand_count():
    labels = [0, 1, 1, 2, 1, 0, 1, 2]  # class 1: 4 of 8
    m = majority_class_metrics(torch.tensor(labels), ["acc", "f1", "mcc"], num_classes=3)
    assert m["acc"] == pytest.approx(4 / 8)
    # always "1": F1 of class 1 = 2·(4/8·1)/(4/8 + 1) = 2/3, classes 0 and 2 score 0 → macro 2/9
    assert m["f1"] == pytest.approx(2 / 9)
    assert m["mcc"] == pytest.approx(0.0)


def test_each_split_gets_its_own_majority_class():
    dm = _Splits(validation=[2, 2, 2, 0], test=[0, 0, 1, 1, 1], test_mm=[0, 1])
    task = TaskInfo("t", 3, metrics=("acc",), test_split_names=("test", "test_mm"))
    assert majority_baselines(dm, task) == pytest.approx(
        {"val/majority_acc": 0.75, "test/majority_acc": 0.6, "test_mm/majority_acc": 0.5,
         "val/examples": 4, "test/examples": 5, "test_mm/examples": 2}
    )


def test_prediction_spread_counts_labels_and_the_top_share():
    metrics = metric_collection(["acc"], 3, prefix="test/")
    metrics.update(torch.tensor([2, 2, 0, 2]), torch.tensor([0, 1, 2, 2]))
    metrics.update(torch.tensor([2]), torch.tensor([2]))
    out = {k: float(v) for k, v in metrics.compute().items()}
    assert out == pytest.approx({"test/acc": 0.4, "test/labels_predicted": 2.0, "test/top_label_share": 0.8})


TASK = TaskInfo("t", 3, metrics=("acc", "f1"), primary_metric="acc")


def test_a_single_label_model_is_flagged_whatever_its_accuracy():
    metrics = {"test/acc": 0.9, "test/labels_predicted": 1.0, "test/majority_acc": 0.9}
    assert learned_nothing(metrics, "", "test", "acc", 0.01) == "predicts a single label for every test example"


@pytest.mark.parametrize(("score", "flagged"), [(0.655, True), (0.669, True), (0.671, False), (0.9, False)])
def test_a_model_within_min_gain_of_the_majority_is_flagged(score, flagged):
    metrics = {"test/acc": score, "test/labels_predicted": 3.0, "test/majority_acc": 0.66}
    why = learned_nothing(metrics, "", "test", "acc", 0.01)
    assert (why is not None) == flagged
    if flagged:
        assert why == f"test/acc {score:.4f} does not beat always predicting the majority class (0.6600) by 0.01"


def test_accuracy_inside_the_binomial_noise_band_of_the_majority_rate_is_flagged():
    # 379 drug-review test examples at a 0.6544 majority rate: 1.645 * sqrt(.6544 * .3456 / 379) = 0.0402
    assert noise_band(0.6544, 379, 0.95) == pytest.approx(0.0402, abs=1e-4)
    base = {"test/labels_predicted": 3.0, "test/majority_acc": 0.6544, "test/examples": 379.0}
    why = learned_nothing({**base, "test/acc": 0.6649}, "", "test", "acc", 0.01, confidence=0.95)
    assert why == ("test/acc 0.6649 does not beat always predicting the majority class (0.6544) by 0.0402 "
                   "(the 95% noise band of that rate on 379 examples)")
    assert learned_nothing({**base, "test/acc": 0.6649}, "", "test", "acc", 0.01) is None  # band off
    assert learned_nothing({**base, "test/acc": 0.7230}, "", "test", "acc", 0.01, confidence=0.95) is None
    # a margin wider than the band wins (2,000 tweets at 0.429: band 0.0182)
    tweets = {"test/labels_predicted": 3.0, "test/majority_acc": 0.429, "test/examples": 2000.0, "test/acc": 0.46}
    assert learned_nothing(tweets, "", "test", "acc", 0.05, confidence=0.95).endswith("by 0.05")
    assert learned_nothing(tweets, "", "test", "acc", 0.01, confidence=0.95) is None


def test_warnings_name_the_model_and_the_split():
    metrics = {
        "val/acc": 0.8, "val/labels_predicted": 3.0, "val/majority_acc": 0.5,
        "test/acc": 0.5, "test/labels_predicted": 1.0, "test/majority_acc": 0.5,
        "teacher/test/acc": 0.52, "teacher/test/labels_predicted": 2.0,
    }
    assert model_warnings(metrics, TASK, 0.05) == [
        "student predicts a single label for every test example",
        "teacher test/acc 0.5200 does not beat always predicting the majority class (0.5000) by 0.05",
    ]
    assert model_warnings({**metrics, "test/labels_predicted": 2.0}, TASK, None) == []  # null: margin off


def test_the_primary_metric_decides():
    task = TaskInfo("t", 2, metrics=("acc", "mcc"), primary_metric="mcc")
    metrics = {"test/acc": 0.9, "test/mcc": 0.0, "test/labels_predicted": 2.0, "test/majority_mcc": 0.0,
               "test/majority_acc": 0.7, "val/mcc": 0.4, "val/majority_mcc": 0.0}
    assert model_warnings(metrics, task, 0.05) == [
        "student test/mcc 0.0000 does not beat always predicting the majority class (0.0000) by 0.05"
    ]


# --- the small-data rule ---------------------------------------------------------------------------------

def test_steps_per_epoch_as_lightning_counts_them():
    assert steps_per_epoch(4000, 32) == 125
    assert steps_per_epoch(540, 32) == 17
    assert steps_per_epoch(540, 32, world_size=2) == 9  # 270 per rank
    assert steps_per_epoch(540, 32, accumulate_grad_batches=4) == 5
    assert steps_per_epoch(540, 32, limit_train_batches=0.5) == 8
    assert steps_per_epoch(540, 32, limit_train_batches=3) == 3


@pytest.mark.parametrize(
    ("epochs", "min_steps", "per_epoch", "max_steps", "expected"),
    [
        (2, 250, 125, -1, 2),  # 4,000 tweets: untouched
        (2, 250, 17, -1, 15),  # 540 drug reviews: 15 epochs = 255 steps
        (20, 250, 17, -1, 20),  # more epochs than the rule asks: kept
        (2, 250, 17, 100, 2),  # an explicit step budget wins
        (2, 0, 17, -1, 2),  # rule off
        (-1, 250, 17, -1, -1),  # unbounded epochs stay unbounded
    ],
)
def test_epochs_are_raised_only_on_small_data(epochs, min_steps, per_epoch, max_steps, expected):
    assert epochs_for_min_steps(epochs, min_steps, per_epoch, max_steps) == expected
