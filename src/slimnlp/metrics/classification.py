"""Task-quality metrics by name, so data configs can say which ones a task reports.

``f1`` is macro-F1 (every class counts the same: the honest number for imbalanced 3-way sentiment);
``f1_binary`` is the F1 of class 1, the number GLUE reports for MRPC and QQP; ``mcc`` is Matthews
correlation, CoLA's metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def check_metric_names(names: Sequence[str], key: str = "data.metrics") -> None:
    for name in names:
        if name not in _FACTORIES:
            raise ConfigError(key, name, f"allowed metrics: {', '.join(METRIC_NAMES)}")


def metric_collection(names: Sequence[str], num_classes: int, prefix: str) -> MetricCollection:
    """Metrics updated with ``(predicted_class, label)``; keys come out as ``<prefix><name>``."""
    check_metric_names(names)
    if "f1_binary" in names and num_classes != 2:
        raise ConfigError("data.metrics", "f1_binary", f"needs 2 classes, the task has {num_classes}")
    return MetricCollection({name: _FACTORIES[name](num_classes) for name in names}, prefix=prefix)
