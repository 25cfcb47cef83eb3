"""Models that learned nothing, caught: the majority-class baseline of every evaluated split, and warnings.

On a small or imbalanced dataset a model can reach a respectable-looking accuracy by predicting the most
frequent label for every example; its macro-F1 then sits at ``1/k`` of one class's F1 and a student
distilled from it agrees with it perfectly. Every run therefore records, for each evaluated split, what
the constant majority-class predictor scores on that split's own labels (``val/majority_acc``,
``test/majority_f1``, … — the majority class is the split's most frequent label, so this is the best any
constant predictor does there), and flags a model (student or teacher) that predicts a single label or
does not beat that baseline by a margin on the task's primary metric. The margin is ``warnings.min_gain``
and, for accuracy, at least the one-sided ``warnings.confidence`` band of a binomial proportion at the
majority rate, ``z·sqrt(p(1-p)/n)`` (normal approximation): 0.040 for 379 drug-review test examples at
p = 0.654, 0.018 for 2,000 tweets at p = 0.429. A model inside that band is indistinguishable from
always predicting the majority class on that many examples. The teacher check is a gate
(``slimnlp.teachers``): a teacher that does not beat the baseline on validation by
``teacher.finetune.min_gain`` never teaches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
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
    """``<split>/majority_<metric>`` and ``<split>/examples`` for the validation split and every test split."""
    splits = splits if splits is not None else ("val", *task.test_split_names)
    out: dict[str, float] = {}
    for split in splits:
        labels = dm.datasets["validation" if split == "val" else split]["labels"]
        out[f"{split}/examples"] = float(len(labels))
        for name, value in majority_class_metrics(labels, task.metrics, task.num_labels).items():
            out[f"{split}/{MAJORITY}{name}"] = value
    return out


def noise_band(rate: float, examples: float, confidence: float) -> float:
    """One-sided ``confidence`` half-width of a binomial proportion ``rate`` measured on ``examples``."""
    return NormalDist().inv_cdf(confidence) * math.sqrt(rate * (1 - rate) / examples)


def learned_nothing(
    metrics: Mapping[str, float],
    prefix: str,
    split: str,
    primary: str,
    min_gain: float | None,
    confidence: float | None = None,
) -> str | None:
    """Why the model whose metrics carry ``prefix`` (``""`` student, ``"teacher/"``) learned nothing on
    ``split``, or None. Needs ``<split>/majority_<primary>`` (and, for the band, ``<split>/examples``)."""
    if metrics.get(f"{prefix}{split}/labels_predicted") == 1:
        return f"predicts a single label for every {split} example"
    score, baseline = metrics.get(f"{prefix}{split}/{primary}"), metrics.get(f"{split}/{MAJORITY}{primary}")
    if score is None or baseline is None:
        return None
    margin, reason = min_gain, ""
    examples = metrics.get(f"{split}/examples")
    if primary == "acc" and confidence is not None and examples:
        band = noise_band(baseline, examples, confidence)
        if margin is None or band > margin:
            margin, reason = band, f" (the {confidence:.0%} noise band of that rate on {examples:.0f} examples)"
    if margin is None or score - baseline >= margin - 1e-9:
        return None
    return (f"{split}/{primary} {score:.4f} does not beat always predicting the majority class "
            f"({baseline:.4f}) by {margin:.3g}{reason}")


def model_warnings(
    metrics: Mapping[str, float], task: TaskInfo, min_gain: float | None, confidence: float | None = None
) -> list[str]:
    """One line per (model, split) that learned nothing, for ``results.json``'s ``warnings``."""
    warnings = []
    for who, prefix, splits in (
        ("student", "", ("val", *task.test_split_names)),
        ("teacher", "teacher/", task.test_split_names),
    ):
        for split in splits:
            why = learned_nothing(metrics, prefix, split, task.primary_metric, min_gain, confidence)
            if why:
                warnings.append(f"{who} {why}")
    return warnings
