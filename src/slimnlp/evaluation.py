"""The runner's evaluation beyond the test split: out of distribution (``ood/*``) and under seeded
perturbations (``robust/*``), for the student and its teacher on identical inputs (``metrics.robustness``).

The word-substitution attack draws its neighbours from the teacher's input embeddings; the table takes
seconds to build, so it is cached on disk beside the other caches, keyed by the teacher folder and ``k``. The
teacher's own figures are the same for every student of a task, so they are cached too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from slimnlp.metrics.ood import ood_metrics
from slimnlp.metrics.robustness import (
    NeighbourTable,
    Perturbation,
    Typo,
    WordSubstitution,
    neighbour_table_from_model,
    robustness_metrics,
)
from slimnlp.results import write_json_atomic

log = logging.getLogger("slimnlp")


def cached_neighbour_table(
    embedder: nn.Module, tokenizer: Any, source: Path, k: int, cache_dir: Path
) -> NeighbourTable:
    """The embedding-neighbour table of ``embedder`` (built once per teacher folder and ``k``)."""
    key = hashlib.sha256(f"{Path(source).resolve()}|{k}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "attacks" / f"neighbours-{key}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return NeighbourTable(
            {w: tuple(n) for w, n in saved["neighbours"].items()}, saved["lowercase"], saved["k"]
        )
    table = neighbour_table_from_model(embedder, tokenizer, k=k)
    write_json_atomic(
        path, {"neighbours": dict(table.neighbours), "lowercase": table.lowercase, "k": table.k}
    )
    return table


def attacks_from_config(
    robustness: DictConfig, embedder: nn.Module, tokenizer: Any, source: Path, cache_dir: Path
) -> dict[str, Perturbation]:
    attacks: dict[str, Perturbation] = {}
    for name in robustness.attacks:
        if name == "typo":
            attacks[name] = Typo(rate=robustness.rate)
        elif name == "word":
            table = cached_neighbour_table(embedder, tokenizer, source, robustness.neighbours, cache_dir)
            attacks[name] = WordSubstitution(table, rate=robustness.rate)
    return attacks


def _metrics(
    models: Mapping[str, nn.Module],
    dm: Any,
    ood_datamodules: Mapping[str, Any],
    robustness: DictConfig,
    attacks: Mapping[str, Perturbation],
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, ood_dm in ood_datamodules.items():
        metrics.update(ood_metrics(models, dm.label_names, name, ood_dm, tokenizer=dm.tokenizer))
    if attacks:
        metrics.update(robustness_metrics(models, dm, attacks, robustness.num_examples, robustness.seed))
    return metrics


def _teacher_key(
    teacher_dir: Path, dm: Any, ood_datamodules: Mapping[str, Any], robustness: DictConfig
) -> str:
    """Everything the teacher's ``ood/*`` and ``robust/*`` depend on: its weights (folder), the task's data,
    each OOD set's data, the attack settings."""
    parts = {
        "teacher": str(Path(teacher_dir).resolve()),
        "data": dm.fingerprint,
        "ood": {name: ood_dm.fingerprint for name, ood_dm in ood_datamodules.items()},
        "robustness": OmegaConf.to_container(robustness, resolve=True),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def beyond_test_metrics(
    cfg: DictConfig,
    student: nn.Module,
    teacher: nn.Module | None,
    teacher_dir: Path | None,
    dm: Any,
    ood_datamodules: Mapping[str, Any],
) -> dict[str, float]:
    """``robust/*`` and ``ood/<name>/*`` of the student and (``teacher/``) the teacher.

    The teacher's figures depend only on the teacher and the inputs, which are the same for every student of
    the task, so they are computed once and cached (``cache_dir/teacher_eval``) like the teacher itself; the
    student's are computed every run."""
    robustness = cfg.eval.robustness
    attacks: dict[str, Perturbation] = {}
    if robustness.attacks:
        embedder = teacher if teacher is not None else student
        source = teacher_dir if teacher_dir is not None else Path(cfg.paths.output_dir)
        attacks = attacks_from_config(robustness, embedder, dm.tokenizer, source, Path(cfg.paths.cache_dir))
    if not ood_datamodules and not attacks:
        return {}
    metrics = _metrics({"student": student}, dm, ood_datamodules, robustness, attacks)
    if teacher is None:
        return metrics
    cached = None
    if teacher_dir is not None:
        key = _teacher_key(teacher_dir, dm, ood_datamodules, robustness)
        cached = Path(cfg.paths.cache_dir) / "teacher_eval" / f"{key}.json"
    if cached is not None and cached.exists():
        log.info("teacher's OOD and attack metrics from the cache: %s", cached)
        metrics.update(json.loads(cached.read_text()))
        return metrics
    teacher_metrics = _metrics({"teacher": teacher}, dm, ood_datamodules, robustness, attacks)
    if cached is not None:
        write_json_atomic(cached, teacher_metrics)
    metrics.update(teacher_metrics)
    return metrics
