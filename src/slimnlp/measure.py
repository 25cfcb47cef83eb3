"""The runner's measurement step: what was saved is what is measured (parameters, bytes of the artifact
folder, latency against the teacher on the CPU, timed in alternating rounds in one process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from transformers import PreTrainedModel

from slimnlp.artifacts import artifact_bytes
from slimnlp.metrics.efficiency import efficiency_metrics
from slimnlp.models.loading import set_attention_implementation


def measure_efficiency(
    cfg: DictConfig, student: PreTrainedModel, teacher: PreTrainedModel, dm: Any, student_dir: Path
) -> dict[str, float]:
    """``eff/*`` of the exported student against the teacher's ``teacher/eff/*``."""
    for model in (student, teacher):  # time both with the same (fast) attention kernel
        set_attention_implementation(model, "sdpa")
    metrics = efficiency_metrics(
        student.cpu(),
        teacher.cpu(),
        dm.fixed_length_batch(cfg.measure.latency_batch_size),
        repeats=cfg.measure.latency_repeats,
        warmup=cfg.measure.latency_warmup,
    )
    metrics["eff/disk_bytes"] = float(artifact_bytes(student_dir))
    return metrics
