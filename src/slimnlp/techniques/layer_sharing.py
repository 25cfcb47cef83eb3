"""Cross-layer parameter sharing, trained with distillation from the teacher: the student's ``N`` encoder
positions run ``M < N`` distinct layers.

    python train.py technique=layer_sharing student=6L technique.strategy=cycle technique.unique_layers=3

Strategies (position ``j`` of ``N`` runs unique layer ``pattern[j]``):

- ``all`` — ALBERT (Lan et al. 2020): one layer at every position (``M = 1``);
- ``sequence``, ``cycle``, ``cycle_rev`` — Takase & Kiyono 2021, "Lessons on Parameter Sharing across Layers in
  Transformers": ``M`` layers, each used ``N/M`` times; ``sequence`` repeats each layer in place (0,0,1,1,2,2),
  ``cycle`` repeats the stack (0,1,2,0,1,2), ``cycle_rev`` cycles and then runs the last ``M`` positions in
  reverse (0,1,2,2,1,0), their best strategy;
- ``sandwich`` — Subformer (Reid et al. 2021): the first and the last layer independent, one shared layer at
  every position between (0,1,1,1,1,2).

Each unique layer starts from the student's layer at the first position that uses it (the student itself
starts from teacher layers with ``student.init_from``). A shared layer is one module at several positions, so
its gradient is the sum over its uses and the artifact stores it once (``slimnlp.artifacts``' ``shared``
manifest): ``eff/params`` and ``eff/disk_bytes`` count it once, while FLOPs and latency do not fall — every
position still runs. Loss: ``α·CE + (1−α)·τ²·KL`` with the teacher (``distill``), or CE alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_optional_kd, kd_or_ce

log = logging.getLogger(__name__)
STRATEGIES = ("all", "sequence", "cycle", "cycle_rev", "sandwich")
REPEATING = ("sequence", "cycle", "cycle_rev")  # the ones that take unique_layers


def sharing_pattern(strategy: str, depth: int, unique_layers: int | None = None) -> list[int]:
    """The unique layer each of ``depth`` positions runs (module docstring)."""
    if strategy == "all":
        return [0] * depth
    if strategy == "sandwich":
        if depth < 3:
            raise ValueError(f"sandwich needs at least 3 layers, got {depth}")
        return [0] + [1] * (depth - 2) + [2]
    if strategy not in REPEATING:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not unique_layers or depth % unique_layers:
        raise ValueError(f"{strategy}: {unique_layers} unique layers do not divide {depth} positions")
    m, repeats = unique_layers, depth // unique_layers
    if strategy == "sequence":
        return [j // repeats for j in range(depth)]
    cycle = [j % m for j in range(depth)]
    return cycle if strategy == "cycle" else cycle[: depth - m] + list(reversed(range(m)))


class LayerSharing(Technique):
    def __init__(self, strategy: str = "cycle_rev", unique_layers: int | None = None, distill: bool = True,
                 alpha: float = 0.5, temperature: float = 2.0, **base: Any) -> None:
        super().__init__(**base)
        type(self).validate_hparams(**self.hparams)
        self.strategy, self.unique_layers = strategy, unique_layers
        self.distill, self.alpha, self.temperature = distill, alpha, temperature
        self.pattern: list[int] = []

    @classmethod
    def validate_hparams(cls, strategy: str, unique_layers: Any, distill: Any, alpha: float, temperature: float,
                         **_: Any) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError("technique.strategy", strategy, f"one of {list(STRATEGIES)}")
        if strategy in REPEATING and (not isinstance(unique_layers, int) or isinstance(unique_layers, bool)
                                      or unique_layers < 1):
            raise ConfigError("technique.unique_layers", unique_layers, f"a number of distinct layers >= 1 for {strategy}")
        if strategy not in REPEATING and unique_layers is not None:
            raise ConfigError("technique.unique_layers", unique_layers, f"null for {strategy} (its pattern fixes it)")
        check_optional_kd(distill, alpha, temperature)

    @classmethod
    def requirements(cls, distill: bool = True, **_: Any) -> Requirements:
        return Requirements(teacher=distill, cacheable_teacher_logits=distill)

    @classmethod
    def check_models(cls, models: ModelConfigs, strategy: str = "cycle_rev", unique_layers: int | None = None,
                     **_: Any) -> None:
        depth = models.student.num_hidden_layers
        try:
            pattern = sharing_pattern(strategy, depth, unique_layers)
        except ValueError:
            allowed = "at least 3 layers" if strategy == "sandwich" else f"a divisor of student.num_hidden_layers = {depth}"
            key = "student.num_hidden_layers" if strategy == "sandwich" else "technique.unique_layers"
            raise ConfigError(key, depth if strategy == "sandwich" else unique_layers,
                              f"{allowed} (for strategy {strategy})") from None
        if len(set(pattern)) == depth:
            raise ConfigError("technique.unique_layers", unique_layers, f"fewer than the {depth} layers (else nothing is "
                              "shared)")

    def prepare_student(self) -> None:
        layers = list(structure.encoder_layers(self.student))
        self.pattern = sharing_pattern(self.strategy, len(layers), self.unique_layers)
        first_use = {k: self.pattern.index(k) for k in sorted(set(self.pattern))}
        structure.set_encoder_layers(self.student, [layers[first_use[k]] for k in self.pattern])
        log.info("layer_sharing (%s): positions run unique layers %s, each initialised from position %s",
                 self.strategy, self.pattern, list(first_use.values()))

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        teacher = self.teacher_logits(batch) if self.distill else None
        return kd_or_ce(self(batch), batch["labels"], teacher, self.alpha, self.temperature)

    def compression_metrics(self) -> dict[str, float]:
        layers = structure.encoder_layers(self.student)
        return {"compress/unique_layers": float(len({id(layer) for layer in layers})),
                "compress/layer_positions": float(len(layers))}
