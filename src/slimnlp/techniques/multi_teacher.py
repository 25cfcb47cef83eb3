"""Distillation from several teachers at once.

The student matches a combination of the teachers' softened distributions::

    p̄ = Σ_k w_k · softmax(z_k / τ)        (Σ_k w_k = 1)
    L = α·CE(z_S, y) + (1−α)·τ²·KL(p̄ ‖ p_S^τ) + β·(1/L_S)·Σ_j MSE(H_S,j, Σ_k w_k·H_k,m_k(j))

``combine`` picks the weights:

- ``mean``: ``w_k = 1/K``, averaging the teachers' soft labels — the ensemble soft targets of Hinton et
  al. 2015 (§2) and the averaged-soft-label variant of Fukuda et al. 2017, "Efficient Knowledge
  Distillation from an Ensemble of Teachers" (Interspeech).
- ``weighted``: fixed ``weights`` given in the config, normalized to sum to 1.
- ``performance``: per example, ``w_k ∝ 1 / (1 + CE(y, p_k))`` — the multi-teacher distillation loss of
  Wu et al. 2021, "One Teacher is Enough? Pre-trained Language Model Distillation from Multiple Teachers"
  (Findings of ACL, MT-BERT), which weighs each teacher's soft loss by how well that teacher predicts the
  gold label of that example. slimnlp normalizes the weights per example so ``α`` keeps the meaning it
  has in ``technique=kd``; because the soft loss is linear in the target distribution, weighting
  per-teacher soft cross-entropies equals one cross-entropy against the weighted mixture, up to teacher
  entropies that do not depend on the student.

``hidden_weight`` (β) adds a hidden-state MSE from each student layer to the same weighted average of the
teachers' hidden states at uniform layer maps (MT-BERT's multi-teacher hidden loss works in the same
spirit; MT-BERT also *co-finetunes* its teachers with a shared pooler and classifier so their spaces
align — teachers here are fine-tuned independently by the runner, so that part is not reproduced).
Hidden states are only averaged across teachers as wide as the student; any other width is a ConfigError.

Teachers are held unregistered, like the base class's ``teacher``: frozen, in eval mode, outside the
optimizer and the checkpoint. Without the hidden loss only logits are needed, and each teacher's logits can
come from its own per-example ``TeacherLogitCache`` (the runner attaches them, ``attach_logit_caches``); the
combination is recomputed from the cached logits every step, so ``combine=performance`` stays exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.losses.kd import kd_kl
from slimnlp.losses.tinybert import hidden_mse
from slimnlp.models import structure
from slimnlp.models.students import uniform_layer_map
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights

log = logging.getLogger(__name__)

COMBINES = ("mean", "weighted", "performance")
SPEC_KEYS = ("teacher", "seed", "checkpoint")


def combine_soft_targets(logits_T: Sequence[Tensor], weights: Tensor, temperature: float) -> Tensor:
    """Log of the mixture ``Σ_k w_k·softmax(z_k/τ)``, computed in log space (no ``log 0``).

    ``weights`` is ``(K,)`` (one weight per teacher) or ``(batch, K)`` (per example); each row sums to 1.
    """
    log_p = torch.stack([F.log_softmax(z / temperature, dim=-1) for z in logits_T], dim=-1)  # (B, C, K)
    log_w = weights.log().unsqueeze(-2) if weights.dim() == 2 else weights.log()
    return torch.logsumexp(log_p + log_w, dim=-1)


def performance_weights(logits_T: Sequence[Tensor], labels: Tensor) -> Tensor:
    """Wu et al. 2021 (MT-BERT): ``w_k ∝ 1/(1 + CE(y, p_k))`` per example, normalized over teachers."""
    ce = torch.stack([F.cross_entropy(z, labels, reduction="none") for z in logits_T], dim=-1)  # (B, K)
    raw = 1.0 / (1.0 + ce)
    return raw / raw.sum(-1, keepdim=True)


def _check_combine(combine: str, weights: Sequence[float] | None, num_teachers: int) -> None:
    if combine not in COMBINES:
        raise ConfigError("technique.combine", combine, f"allowed: {', '.join(COMBINES)}")
    if combine != "weighted":
        if weights is not None:
            raise ConfigError(
                "technique.weights",
                list(weights),
                f"only used with combine=weighted (combine={combine}); set null",
            )
        return
    if weights is None or len(weights) != num_teachers:
        raise ConfigError(
            "technique.weights", weights, f"combine=weighted needs one weight per teacher ({num_teachers})"
        )
    if not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
        for w in weights
    ):
        raise ConfigError("technique.weights", list(weights), "every weight must be a finite number > 0")


def _check_specs(teachers: Any) -> None:
    if isinstance(teachers, (str, Mapping)) or not isinstance(teachers, Sequence) or len(teachers) == 0:
        raise ConfigError(
            "technique.teachers", teachers, "a non-empty list of {teacher, seed, checkpoint} specs"
        )
    for i, spec in enumerate(teachers):
        key = f"technique.teachers[{i}]"
        if not isinstance(spec, Mapping):
            raise ConfigError(
                key, spec, "a mapping {teacher: <conf/teacher option>, seed: int|null, checkpoint: path|null}"
            )
        if unknown := sorted(set(spec) - set(SPEC_KEYS)):
            raise ConfigError(key, dict(spec), f"unknown keys {unknown}; allowed: {', '.join(SPEC_KEYS)}")
        if not isinstance(spec.get("teacher"), str) or not spec["teacher"]:
            raise ConfigError(
                f"{key}.teacher", spec.get("teacher"), "the name of a conf/teacher option, e.g. minilm_l6"
            )
        seed = spec.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{key}.seed", seed, "an integer, or null for the run seed")
        checkpoint = spec.get("checkpoint")
        if checkpoint is not None and not isinstance(checkpoint, str):
            raise ConfigError(f"{key}.checkpoint", checkpoint, "a folder of a fine-tuned teacher, or null")


class MultiTeacherKD(Technique):
    def __init__(
        self,
        teachers: Sequence[PreTrainedModel],
        combine: str = "mean",
        weights: Sequence[float] | None = None,
        alpha: float = 0.5,
        temperature: float = 4.0,
        hidden_weight: float = 0.0,
        layer_map: Sequence[int] | None = None,
        **base: Any,
    ) -> None:
        if isinstance(teachers, (str, Mapping)) or not isinstance(teachers, Sequence) or not teachers:
            raise ConfigError("technique.teachers", teachers, "a non-empty list of models")
        if not all(isinstance(t, PreTrainedModel) for t in teachers):
            raise ConfigError(
                "technique.teachers",
                [type(t).__name__ for t in teachers],
                "models (the runner loads the specs before building the technique)",
            )
        self._check_scalars(combine, weights, len(teachers), alpha, temperature, hidden_weight, layer_map)
        super().__init__(**base)
        self.combine, self.alpha, self.temperature = combine, alpha, temperature
        self.hidden_weight = hidden_weight
        w = torch.ones(len(teachers)) if weights is None else torch.tensor([float(x) for x in weights])
        self.register_buffer("teacher_weights", w / w.sum(), persistent=False)
        for teacher in teachers:
            teacher.eval().requires_grad_(False)
        object.__setattr__(self, "_teachers", list(teachers))  # unregistered on purpose, like base.teacher
        self.extra_logit_caches = [None] * len(teachers)
        self.check_models(ModelConfigs(self.student.config, None, tuple(t.config for t in teachers)), **self.hparams)
        self.layer_maps = self._derive_layer_maps(layer_map)

    @classmethod
    def validate_hparams(
        cls,
        teachers: Any,
        combine: str,
        weights: Sequence[float] | None,
        alpha: float,
        temperature: float,
        hidden_weight: float,
        layer_map: Sequence[int] | None,
        **_: Any,
    ) -> None:
        _check_specs(teachers)
        cls._check_scalars(combine, weights, len(teachers), alpha, temperature, hidden_weight, layer_map)

    @staticmethod
    def _check_scalars(
        combine: str,
        weights: Sequence[float] | None,
        num_teachers: int,
        alpha: float,
        temperature: float,
        hidden_weight: float,
        layer_map: Sequence[int] | None,
    ) -> None:
        check_kd_weights(alpha, temperature)
        _check_combine(combine, weights, num_teachers)
        if hidden_weight < 0:
            raise ConfigError(
                "technique.hidden_weight", hidden_weight, "the hidden-state loss weight must be >= 0"
            )
        if layer_map is not None and not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layer_map
        ):
            raise ConfigError(
                "technique.layer_map",
                layer_map,
                "null (uniform map per teacher) or teacher layer indices >= 0",
            )

    @classmethod
    def requirements(cls, hidden_weight: float = 0.0, **_: Any) -> Requirements:
        # Without the hidden loss each teacher's logits may come from its own disk cache.
        hidden = hidden_weight > 0
        return Requirements(
            teacher=True, extra_teachers=True, hidden_states=hidden, cacheable_teacher_logits=not hidden
        )

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        """With the hidden loss, every teacher must be as wide as the student and the layer map must fit."""
        if not hparams.get("hidden_weight", 0.0) > 0:
            return
        layer_map = hparams.get("layer_map")
        for k, config in enumerate(models.extra_teachers):
            if models.student.hidden_size != config.hidden_size:
                raise ConfigError(
                    "technique.hidden_weight",
                    hparams["hidden_weight"],
                    f"the hidden loss averages teacher hidden states, so widths must match: student "
                    f"{models.student.hidden_size} vs teacher {k} {config.hidden_size}; set hidden_weight=0",
                )
            n_S, n_T = models.student.num_hidden_layers, config.num_hidden_layers
            if layer_map is not None and (len(layer_map) != n_S or max(layer_map) >= n_T):
                raise ConfigError(
                    "technique.layer_map",
                    list(layer_map),
                    f"one teacher layer < {n_T} for each of the {n_S} student layers (teacher {k})",
                )

    def _derive_layer_maps(self, layer_map: Sequence[int] | None) -> list[list[int]]:
        """Label spaces must agree; with the hidden loss, one layer map per teacher."""
        num_labels = self.student.config.num_labels
        maps: list[list[int]] = []
        for k, teacher in enumerate(self._teachers):
            if teacher.config.num_labels != num_labels:
                raise ConfigError(
                    f"technique.teachers[{k}]",
                    teacher.config.num_labels,
                    f"every teacher must predict the student's {num_labels} labels",
                )
            if not self.needs.hidden_states:
                continue
            n_S, n_T = structure.num_layers(self.student), structure.num_layers(teacher)
            mapping = uniform_layer_map(n_S, n_T) if layer_map is None else list(layer_map)
            log.info(
                "multi_teacher: teacher %d layer -> student layer: %s",
                k,
                ", ".join(f"{t}->{s}" for s, t in enumerate(mapping)),
            )
            maps.append(mapping)
        return maps

    @property
    def teachers(self) -> list[PreTrainedModel]:
        return self._teachers

    def frozen_models(self) -> list[nn.Module]:
        return [*super().frozen_models(), *self._teachers]

    @torch.no_grad()
    def ensemble_outputs(
        self, batch: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], list[tuple[Tensor, ...]] | None]:
        """Every teacher's logits (cached where possible) and, with the hidden loss, its hidden states."""
        if not self.needs.hidden_states:
            caches = self.extra_logit_caches
            return [self.cached_logits(cache, t, batch) for cache, t in zip(caches, self._teachers)], None
        outs = [t(**model_inputs(batch), output_hidden_states=True) for t in self._teachers]
        return [o.logits for o in outs], [o.hidden_states for o in outs]

    def combination_weights(self, logits_T: Sequence[Tensor], labels: Tensor) -> Tensor:
        """``(K,)`` fixed weights, or ``(batch, K)`` for ``combine=performance``."""
        if self.combine == "performance":
            return performance_weights(logits_T, labels)
        return self.teacher_weights

    # ------------------------------------------------------------------ objective
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out_S = self.student_outputs(batch)
        logits_T, hidden_T = self.ensemble_outputs(batch)
        labels = batch["labels"]
        weights = self.combination_weights(logits_T, labels)
        log_p_bar = combine_soft_targets(logits_T, weights, self.temperature)
        ce = F.cross_entropy(out_S.logits, labels)
        # τ·log p̄ is a logit vector whose softmax at temperature τ is exactly p̄
        kd = kd_kl(out_S.logits, self.temperature * log_p_bar, self.temperature)
        losses = {"loss/ce": ce, "loss/kd_kl": kd}
        total = self.alpha * ce + (1 - self.alpha) * kd
        if hidden_T is not None:
            hidden = self._hidden_loss(out_S.hidden_states, hidden_T, weights)
            losses["loss/hidden"] = hidden
            total = total + self.hidden_weight * hidden
        return {"loss": total, **losses}

    def _hidden_loss(
        self, hidden_S: tuple[Tensor, ...], hidden_T: list[tuple[Tensor, ...]], weights: Tensor
    ) -> Tensor:
        w = weights if weights.dim() == 2 else weights.expand(hidden_S[0].shape[0], -1)  # (B, K)
        terms = []
        for j in range(len(hidden_S) - 1):  # hidden_states[0] is the embedding output; layers start at 1
            target = sum(w[:, k, None, None] * hidden_T[k][m[j] + 1] for k, m in enumerate(self.layer_maps))
            terms.append(hidden_mse(hidden_S[j + 1], target))
        return torch.stack(terms).mean()
