"""The runner's measurement step: what was saved is what is measured, the same way for every technique.

Student and teacher, in one process and under one thread count (``measure.threads``, recorded as
``eff/threads``), at the task's sequence length (inputs padded to ``data.max_length``):

- ``eff/params``, ``eff/params_nonembedding``, ``eff/nonzero_params`` (``metrics.efficiency``);
- ``eff/flops``: forward FLOPs per example (``metrics.flops``);
- ``eff/latency_ms_b<N>`` (median) and ``eff/latency_ms_b<N>_p90`` for every ``measure.batch_sizes`` entry,
  timed in interleaved rounds (``metrics.latency``); ``eff/speedup_b<N>`` = teacher median / student median;
  ``eff/latency_ms`` and ``eff/speedup`` are the largest batch size's (the tables' column);
- ``eff/peak_mem_mb``: peak memory of a pass at the largest batch (``metrics.memory``);
- ``eff/disk_bytes`` of the artifact folder, ``eff/disk_compression`` = teacher bytes / student bytes;
- with ``onnxruntime`` in ``measure.runtimes``: the same latencies in ONNX Runtime (``eff/ort/...``,
  ``measure.onnx_repeats`` rounds) and the largest logit difference from torch (``eff/ort/max_logit_diff``)
  (``metrics.onnx_runtime``);
- with ``onnxruntime_int8`` as well: the student's ONNX graph quantized to INT8 by ONNX Runtime, timed
  (``eff/ort_int8/...``; only where the student exports: a student already quantized by torch does not);
- ``energy/infer_kwh_per_1k``: energy of inference per 1,000 examples at the largest batch (codecarbon).
Teacher figures carry the ``teacher/`` prefix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from transformers import PreTrainedModel

from slimnlp.artifacts import artifact_bytes
from slimnlp.batch import model_inputs
from slimnlp.metrics.efficiency import parameter_counts
from slimnlp.metrics.energy import EnergyMeter
from slimnlp.metrics.flops import flops_per_example
from slimnlp.metrics.latency import inference_call, interleaved_times_ms, percentiles, torch_threads
from slimnlp.metrics.memory import peak_memory_mb
from slimnlp.metrics.onnx_runtime import OrtClassifier, export_onnx, max_logit_difference
from slimnlp.models.loading import set_attention_implementation

log = logging.getLogger("slimnlp")
PREFIX = {"student": "", "teacher": "teacher/"}
# measure.runtimes -> metric group; onnxruntime_int8 is the student's graph after ORT dynamic INT8 quantization,
# timed against the teacher's fp32 graph
RUNTIME_KEYS = {"torch": "eff/", "onnxruntime": "eff/ort/", "onnxruntime_int8": "eff/ort_int8/"}


def _latencies(
    calls_by_batch: Mapping[int, Mapping[str, Callable[[], Any]]],
    runtime: str,
    repeats: int,
    warmup: int,
    cuda: bool,
) -> dict[str, float]:
    """``latency_ms_b<N>`` (p50), ``_p90`` and ``speedup_b<N>`` per model and batch size, under ``eff/<runtime>``."""
    metrics: dict[str, float] = {}
    group = RUNTIME_KEYS[runtime]
    for size, calls in calls_by_batch.items():
        times = interleaved_times_ms(calls, repeats=repeats, warmup=warmup, cuda=cuda)
        stats = {name: percentiles(t) for name, t in times.items()}
        for name, p in stats.items():
            metrics[f"{PREFIX[name]}{group}latency_ms_b{size}"] = p["p50"]
            metrics[f"{PREFIX[name]}{group}latency_ms_b{size}_p90"] = p["p90"]
        if "teacher" in stats:
            metrics[f"{group}speedup_b{size}"] = stats["teacher"]["p50"] / stats["student"]["p50"]
    return metrics


def _onnxruntime(
    models: Mapping[str, nn.Module],
    batches: Mapping[int, Mapping[str, Tensor]],
    settings: DictConfig,
    threads: int,
    student_onnx: Path,
    teacher_onnx: Path | None,
    int8: bool = False,
) -> dict[str, float]:
    """Export each model, check its logits against torch, time it in ONNX Runtime. The student's graph is
    kept in the run folder (``student_onnx``); the teacher's is exported once into the cache
    (``teacher_onnx``, keyed by its folder) and every run re-checks and re-times it. With ``int8`` the student's
    graph is also quantized by ONNX Runtime (``quantize_dynamic``, int8 weights, dynamic int8 activations),
    kept beside it and timed against the teacher's fp32 graph (``eff/ort_int8/*``, its file size
    ``eff/ort_int8/onnx_bytes``)."""
    largest = batches[max(batches)]
    metrics: dict[str, float] = {}
    runtimes: dict[str, OrtClassifier] = {}
    for name, model in models.items():
        path = student_onnx if name == "student" else teacher_onnx or student_onnx.with_name("teacher.onnx")
        if name == "student" or not path.exists():
            _export_atomically(model, largest, path)
        runtimes[name] = OrtClassifier(path, threads=threads)
        metrics[f"{PREFIX[name]}eff/ort/max_logit_diff"] = max_logit_difference(
            model, runtimes[name], largest
        )
    calls = {
        size: {name: _ort_call(rt, rt.feeds(batch)) for name, rt in runtimes.items()}
        for size, batch in batches.items()
    }
    metrics.update(_latencies(calls, "onnxruntime", settings.onnx_repeats, settings.warmup, cuda=False))
    if int8:
        metrics.update(_onnxruntime_int8(models["student"], runtimes.get("teacher"), batches, settings, threads,
                                         student_onnx))
    return metrics


def _onnxruntime_int8(
    student: nn.Module,
    teacher: OrtClassifier | None,
    batches: Mapping[int, Mapping[str, Tensor]],
    settings: DictConfig,
    threads: int,
    student_onnx: Path,
) -> dict[str, float]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = student_onnx.with_name(f"{student_onnx.stem}.int8.onnx")
    quantize_dynamic(str(student_onnx), str(path), weight_type=QuantType.QInt8)
    runtime = OrtClassifier(path, threads=threads)
    metrics = {"eff/ort_int8/max_logit_diff": max_logit_difference(student, runtime, batches[max(batches)]),
               "eff/ort_int8/onnx_bytes": float(path.stat().st_size)}
    calls = {
        size: {"student": _ort_call(runtime, runtime.feeds(batch)),
               **({"teacher": _ort_call(teacher, teacher.feeds(batch))} if teacher is not None else {})}
        for size, batch in batches.items()
    }
    metrics.update(_latencies(calls, "onnxruntime_int8", settings.onnx_repeats, settings.warmup, cuda=False))
    return {k: v for k, v in metrics.items() if not k.startswith("teacher/")}  # its fp32 times are eff/ort's


def _export_atomically(model: nn.Module, batch: Mapping[str, Tensor], path: Path) -> Path:
    """Export to a temporary sibling, then rename: a reader (another run) sees a whole graph or none."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        export_onnx(model, batch, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _teacher_onnx_path(cache_dir: Path, teacher_dir: Path | None, batch: Mapping[str, Tensor]) -> Path | None:
    if teacher_dir is None:
        return None
    key = f"{Path(teacher_dir).resolve()}|{torch.__version__}|{','.join(model_inputs(batch))}"
    return Path(cache_dir) / "onnx" / f"teacher-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def _ort_call(runtime: OrtClassifier, feeds: Mapping[str, Any]) -> Callable[[], Any]:
    return lambda: runtime.logits(feeds)


def _inference_energy(
    models: Mapping[str, nn.Module], batch: Mapping[str, Tensor], passes: int, energy: EnergyMeter
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    examples = batch["input_ids"].shape[0] * passes
    for name, model in models.items():
        call = inference_call(model, model_inputs(batch))
        with energy.task(f"infer_{name}") as used:
            for _ in range(passes):
                call()
        if used.kwh is not None:
            metrics[f"{PREFIX[name]}energy/infer_kwh_per_1k"] = used.kwh / examples * 1000.0
    return metrics


def measure_efficiency(
    cfg: DictConfig,
    student: PreTrainedModel,
    teacher: PreTrainedModel | None,
    dm: Any,
    student_dir: Path,
    teacher_dir: Path | None,
    run_dir: Path,
    energy: EnergyMeter,
) -> dict[str, float]:
    """``eff/*`` (and ``energy/infer_*``) of the exported student and, under ``teacher/``, of the teacher."""
    settings = cfg.measure
    device = torch.device(settings.device)
    cuda = device.type == "cuda"
    models = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
    for model in models.values():  # time every model with the same (fast) attention kernel
        set_attention_implementation(model, "sdpa")
        model.to(device).eval()
    metrics: dict[str, float] = {}
    with torch_threads(settings.threads) as threads:
        metrics["eff/threads"] = float(threads)
        batches = {
            size: {k: v.to(device) for k, v in dm.fixed_length_batch(size).items()}
            for size in settings.batch_sizes
        }
        largest = batches[max(batches)]
        metrics["eff/seq_len"] = float(largest["input_ids"].shape[1])
        for name, model in models.items():
            metrics.update({f"{PREFIX[name]}eff/{k}": v for k, v in parameter_counts(model).items()})
            if settings.flops:
                metrics[f"{PREFIX[name]}eff/flops"] = flops_per_example(model, batches[min(batches)])
        calls = {
            size: {name: inference_call(model, model_inputs(batch)) for name, model in models.items()}
            for size, batch in batches.items()
        }
        metrics.update(_latencies(calls, "torch", settings.repeats, settings.warmup, cuda))
        if settings.memory:
            for name, model in models.items():
                call = inference_call(model, model_inputs(largest))
                metrics[f"{PREFIX[name]}eff/peak_mem_mb"] = peak_memory_mb(call, cuda=cuda)
        if {"onnxruntime", "onnxruntime_int8"} & set(settings.runtimes):
            cpu_models = {name: model.cpu() for name, model in models.items()}
            cpu_batches = {size: {k: v.cpu() for k, v in b.items()} for size, b in batches.items()}
            teacher_onnx = _teacher_onnx_path(Path(cfg.paths.cache_dir), teacher_dir, largest)
            try:
                metrics.update(
                    _onnxruntime(
                        cpu_models, cpu_batches, settings, threads, run_dir / "student.onnx", teacher_onnx,
                        int8="onnxruntime_int8" in settings.runtimes,
                    )
                )
            except Exception as err:  # noqa: BLE001 - a model torch.export cannot trace loses its ONNX figures, not the run
                log.warning("not timed in ONNX Runtime: the export failed (%s: %s)", type(err).__name__, err)
            for model in models.values():
                model.to(device)
        metrics.update(_inference_energy(models, largest, settings.energy_passes, energy))
    size = max(batches)
    metrics["eff/latency_ms"] = metrics[f"eff/latency_ms_b{size}"]
    metrics["eff/disk_bytes"] = float(artifact_bytes(student_dir))
    if teacher is not None:
        metrics["teacher/eff/latency_ms"] = metrics[f"teacher/eff/latency_ms_b{size}"]
        metrics["eff/speedup"] = metrics[f"eff/speedup_b{size}"]
        metrics["eff/compression"] = metrics["teacher/eff/params"] / metrics["eff/params"]
        if teacher_dir is not None:
            metrics["teacher/eff/disk_bytes"] = float(artifact_bytes(teacher_dir))
            metrics["eff/disk_compression"] = metrics["teacher/eff/disk_bytes"] / metrics["eff/disk_bytes"]
    return metrics
