"""Models that learned nothing, caught: the majority-class baseline of every evaluated split, and warnings.

On a small or imbalanced dataset a model can reach a respectable-looking accuracy by predicting the most
frequent label for every example; its macro-F1 then sits at ``1/k`` of one class's F1 and a student
distilled from it agrees with it perfectly. Every run therefore records, for each evaluated split, what
the constant majority-class predictor scores on that split's own labels (``val/majority_acc``,
``test/majority_f1``, … — the majority class is the split's most frequent label, so this is the best any
constant predictor does there), and flags a model (student or teacher) that predicts a single label or
does not beat that baseline by ``warnings.min_gain`` on the task's primary metric. The teacher check is a
gate (``slimnlp.teachers``): a teacher that does not beat the baseline on validation by
``teacher.finetune.min_gain`` never teaches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from slimnlp.metrics.classification import task_metrics
from slimnlp.techniques.base import TaskInfo

MAJORITY = "majority_"  # ``<split>/majority_<metric>``


def majority_class_metrics(labels: torch.Tensor, names: Sequence[str], num_classes: int) -> dict[str, float]:
    """The task metrics of always predicting ``labels``' most frequent class (ties: the lowest index)."""
    labels = torch.as_tensor(labels).long().flatten()
    majority = int(torch.bincount(labels, minlength=num_classes).argmax())
    return task_metrics(names, num_classes, torch.full_like(labels, majority), labels)


def majority_baselines(dm: Any, task: TaskInfo, splits: Sequence[str] | None = None) -> dict[str, float]:
    """``<split>/majority_<metric>`` for the validation split and every test split of ``dm``."""
    splits = splits if splits is not None else ("val", *task.test_split_names)
    out: dict[str, float] = {}
    for split in splits:
        labels = dm.datasets["validation" if split == "val" else split]["labels"]
        for name, value in majority_class_metrics(labels, task.metrics, task.num_labels).items():
            out[f"{split}/{MAJORITY}{name}"] = value
    return out


def learned_nothing(metrics: Mapping[str, float], prefix: str, split: str, primary: str, min_gain: float | None
                    ) -> str | None:
    """Why the model whose metrics carry ``prefix`` (``""`` student, ``"teacher/"``) learned nothing on
    ``split``, or None. Needs ``<split>/majority_<primary>`` in ``metrics``."""
    if metrics.get(f"{prefix}{split}/labels_predicted") == 1:
        return f"predicts a single label for every {split} example"
    score, baseline = metrics.get(f"{prefix}{split}/{primary}"), metrics.get(f"{split}/{MAJORITY}{primary}")
    if min_gain is None or score is None or baseline is None or score >= baseline + min_gain:
        return None
    return (f"{split}/{primary} {score:.4f} does not beat always predicting the majority class "
            f"({baseline:.4f}) by {min_gain:g}")


def model_warnings(metrics: Mapping[str, float], task: TaskInfo, min_gain: float | None) -> list[str]:
    """One line per (model, split) that learned nothing, for ``results.json``'s ``warnings``."""
    warnings = []
    for who, prefix, splits in (
        ("student", "", ("val", *task.test_split_names)),
        ("teacher", "teacher/", task.test_split_names),
    ):
        for split in splits:
            why = learned_nothing(metrics, prefix, split, task.primary_metric, min_gain)
            if why:
                warnings.append(f"{who} {why}")
    return warnings
