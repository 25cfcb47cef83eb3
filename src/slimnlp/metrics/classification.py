"""Task-quality metrics by name, so data configs can say which ones a task reports.

``f1`` is macro-F1 (every class counts the same: the honest number for imbalanced 3-way sentiment);
``f1_binary`` is the F1 of class 1, the number GLUE reports for MRPC and QQP; ``mcc`` is Matthews
correlation, CoLA's metric.

Every collection also reports how the predictions spread over the labels (``labels_predicted``,
``top_label_share``), whatever the task's metrics: a model that learned nothing predicts one label, and
its accuracy alone looks like a result (``slimnlp.diagnostics`` turns these into warnings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)

from slimnlp.errors import ConfigError

_FACTORIES: dict[str, Callable[[int], Metric]] = {
    "acc": lambda n: MulticlassAccuracy(num_classes=n, average="micro"),
    "f1": lambda n: MulticlassF1Score(num_classes=n, average="macro"),
    "f1_binary": lambda n: _BinaryF1OnArgmax(),
    "mcc": lambda n: MulticlassMatthewsCorrCoef(num_classes=n),
}
METRIC_NAMES: tuple[str, ...] = tuple(_FACTORIES)


class _BinaryF1OnArgmax(BinaryF1Score):
    """Binary F1 that accepts class predictions (0/1) like the multiclass metrics do."""

    def update(self, preds, target) -> None:
        super().update(preds.float(), target)


class _PredictedLabelCounts(Metric):
    """Examples predicted as each class (summed across processes)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.counts += torch.bincount(preds.long().flatten(), minlength=self.num_classes)


class LabelsPredicted(_PredictedLabelCounts):
    """How many distinct labels the model predicted: 1 means it predicts a single label for everything."""

    def compute(self) -> Tensor:
        return (self.counts > 0).sum().float()


class TopLabelShare(_PredictedLabelCounts):
    """The share of examples predicted as the model's most frequent prediction (1.0: a single label)."""

    def compute(self) -> Tensor:
        return self.counts.max().float() / self.counts.sum().clamp(min=1).float()


PREDICTION_SPREAD: dict[str, Callable[[int], Metric]] = {
    "labels_predicted": LabelsPredicted,
    "top_label_share": TopLabelShare,
}


def check_metric_names(names: Sequence[str], key: str = "data.metrics") -> None:
    for name in names:
        if name not in _FACTORIES:
            raise ConfigError(key, name, f"allowed metrics: {', '.join(METRIC_NAMES)}")


def metric_collection(names: Sequence[str], num_classes: int, prefix: str) -> MetricCollection:
    """Metrics updated with ``(predicted_class, label)``; keys come out as ``<prefix><name>``. The prediction
    spread (``labels_predicted``, ``top_label_share``) is always included."""
    check_metric_names(names)
    if "f1_binary" in names and num_classes != 2:
        raise ConfigError("data.metrics", "f1_binary", f"needs 2 classes, the task has {num_classes}")
    metrics = {name: _FACTORIES[name](num_classes) for name in names}
    metrics.update({name: factory(num_classes) for name, factory in PREDICTION_SPREAD.items()})
    return MetricCollection(metrics, prefix=prefix)


def task_metrics(names: Sequence[str], num_classes: int, preds: Tensor, labels: Tensor) -> dict[str, float]:
    """The task metrics of ``preds`` against ``labels`` in one call (no prefix, no prediction spread)."""
    check_metric_names(names)
    return {name: float(_FACTORIES[name](num_classes)(preds, labels)) for name in names}
