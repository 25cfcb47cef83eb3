"""Efficiency measured, not computed: parameters and wall-clock latency (bytes on disk: ``slimnlp.artifacts``).

Latency is the median over repeats of a full forward pass on one fixed batch, after warm-up, in
inference mode. Student and teacher are timed alternately in the same process so that frequency
scaling, other load and thread settings hit both alike; the speed-up is the ratio of the two medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from slimnlp.batch import model_inputs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def paired_latency_ms(
    models: Mapping[str, nn.Module], batch: Mapping[str, Tensor], repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median milliseconds per forward pass for each model, timed alternately on the same batch."""
    inputs = model_inputs(batch)
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(**inputs)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(**inputs)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def efficiency_metrics(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: Mapping[str, Tensor],
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """``eff/*`` for the student and ``teacher/eff/*`` for the teacher, plus the measured speed-up."""
    metrics: dict[str, float] = {"eff/params": float(count_params(student))}
    models = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
    latency = paired_latency_ms(models, batch, repeats=repeats, warmup=warmup)
    metrics["eff/latency_ms"] = latency["student"]
    metrics["eff/latency_batch_size"] = float(batch["input_ids"].shape[0])
    metrics["eff/seq_len"] = float(batch["input_ids"].shape[1])
    if teacher is not None:
        metrics["teacher/eff/params"] = float(count_params(teacher))
        metrics["teacher/eff/latency_ms"] = latency["teacher"]
        metrics["eff/speedup"] = latency["teacher"] / latency["student"]
        metrics["eff/compression"] = metrics["teacher/eff/params"] / metrics["eff/params"]
    return metrics
