"""What every unstructured-pruning technique shares: masks on the chosen weights, the sparsity ramp, the
optional distillation loss, and an export whose zeros are real.

Fine-pruning as in Sanh et al. 2020 (and their ``masked_run_glue.py``): the pretrained encoder is fine-tuned
on the task while its weights are masked; the fraction pruned follows the run's ``schedule`` group, read as
*the fraction of the target reached* (``start=0, end=1``: from dense to ``sparsity``). Without a ``schedule``
the ramp is the reference's cubic one, held dense for the first 10% of the steps and at the target for the last
20% (``initial_warmup=1``, ``final_warmup=2`` LR-warm-up lengths in the reference scripts); ``schedule=constant``
is one-shot pruning. The loss is the task's cross-entropy, plus — when ``distill`` (the published
numbers are with KD) — ``α·CE + (1−α)·τ²·KL(p_T ‖ p_S)``, the reference's ``alpha_ce``/``alpha_distil``
mix at its defaults (0.5/0.5, τ = 2).

The masked model is never restored from an earlier, denser checkpoint (``select_best=False``): the model that
is tested is the one at the final sparsity. ``export_student`` folds the masks into the weights (zeros), and
the artifact stores sparse matrices compactly (``slimnlp.artifacts``), so ``eff/disk_bytes`` falls with the
sparsity; ``compress/sparsity`` is measured on the exported weights, never copied from the target.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from slimnlp.errors import ConfigError
from slimnlp.models.structure import check_prunable_parts, num_layers, prunable_modules
from slimnlp.models.surgery import ffn_width, num_heads
from slimnlp.modules.masking import WeightMask, add_mask, materialize, zero_fraction
from slimnlp.schedules import Cubic, Schedule
from slimnlp.techniques.base import Requirements, Stage, Technique
from slimnlp.techniques.kd import check_optional_kd, kd_or_ce

log = logging.getLogger(__name__)
SCOPES = ("layer", "global")
# The reference scripts' ramp: dense for initial_warmup, at the target for final_warmup (fractions of the run).
DEFAULT_RAMP = Cubic(start=0.0, end=1.0, warmup=0.1, cooldown=0.2)


def check_sparsity(sparsity: float, key: str = "technique.sparsity") -> None:
    if not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(key, sparsity, "the fraction of weights removed, in [0, 1)")


def masked_weights(model: nn.Module, paths: Sequence[str]) -> list[tuple[WeightMask, Tensor]]:
    """``(mask, unmasked weight)`` of the masked Linears at ``paths``, in that order."""
    weights = [model.get_submodule(path).parametrizations.weight for path in paths]
    return [(w[0], w.original) for w in weights]


def sliced_shape_metrics(model: nn.Module, heads_before: int, units_before: int) -> dict[str, float]:
    """``compress/*`` of a model whose heads and FFN units were sliced out: what is left, counted on the modules."""
    layers = range(num_layers(model))
    heads = sum(num_heads(model, i) for i in layers)
    units = sum(ffn_width(model, i) for i in layers)
    return {
        "compress/heads_kept": float(heads),
        "compress/heads_kept_fraction": heads / heads_before,
        "compress/ffn_units_kept": float(units),
        "compress/ffn_kept_fraction": units / units_before,
    }


class DistilledPruning(Technique):
    """What every pruning technique shares, structured or not: fine-tuning on the task with an optional
    distillation term (``task_loss``), one ``prune`` stage whose final model is the one tested
    (``select_best=False``: never an earlier, denser checkpoint)."""

    def __init__(self, distill: bool = True, alpha: float = 0.5, temperature: float = 2.0, **base: Any) -> None:
        super().__init__(**base)
        type(self).validate_hparams(**self.hparams)  # every level's keys, as the runner checks them
        self.distill, self.alpha, self.temperature = distill, alpha, temperature

    @classmethod
    def validate_hparams(cls, distill: bool, alpha: float, temperature: float, **_: Any) -> None:
        check_optional_kd(distill, alpha, temperature)

    @classmethod
    def requirements(cls, distill: bool = True, **_: Any) -> Requirements:
        return Requirements(teacher=distill, cacheable_teacher_logits=distill)

    @classmethod
    def stages(cls, **hparams: Any) -> list[Stage]:
        return [Stage("prune", select_best=False)]

    def task_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        teacher = self.teacher_logits(batch) if self.distill else None
        return kd_or_ce(self(batch), batch["labels"], teacher, self.alpha, self.temperature)


class Pruning(DistilledPruning):
    """Base class of unstructured pruning: subclasses say which mask each target gets (``make_mask``) and how
    the level follows the ramp (``set_ramp``); everything else is shared."""

    def __init__(
        self, targets: Sequence[str] = ("encoder",), schedule: Schedule | None = None, **base: Any
    ) -> None:
        super().__init__(**base)
        self.targets = tuple(targets)
        self.schedule = schedule or DEFAULT_RAMP
        self.pruned_paths: list[str] = []

    @classmethod
    def validate_hparams(cls, targets: Sequence[str], **rest: Any) -> None:
        check_prunable_parts(targets)
        super().validate_hparams(**rest)

    # ------------------------------------------------------------------ masks
    def make_mask(self, weight: nn.Parameter) -> WeightMask:
        raise NotImplementedError

    def prepare_student(self) -> None:
        for path, module in prunable_modules(self.student, self.targets):
            add_mask(module, self.make_mask(module.weight))
            self.pruned_paths.append(path)
        log.info("pruning %d weight matrices (%s)", len(self.pruned_paths), ", ".join(self.targets))

    def masked(self) -> list[tuple[WeightMask, Tensor]]:
        """``(mask, unmasked weight)`` of every pruned matrix, in ``pruned_paths`` order."""
        return masked_weights(self.student, self.pruned_paths)

    def masks(self) -> list[WeightMask]:
        return [mask for mask, _ in self.masked()]

    def ramp(self) -> float:
        """Fraction of the target reached at the current step (1 once training is over)."""
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return self.schedule(min(self.global_step, total), total)

    def set_ramp(self, fraction: float) -> None:
        raise NotImplementedError

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.set_ramp(self.ramp())

    def on_train_end(self) -> None:
        self.set_ramp(self.schedule(1, 1))

    # ------------------------------------------------------------------ loss
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses = self.task_loss(batch)
        losses["prune/kept"] = torch.tensor(self.kept_fraction())
        return losses

    @torch.no_grad()
    def kept_fraction(self) -> float:
        """Fraction of the prunable weights the masks keep right now."""
        masked = self.masked()
        kept = sum(mask.kept(weight) for mask, weight in masked)
        return kept / max(sum(weight.numel() for _, weight in masked), 1)

    # ------------------------------------------------------------------ export
    def export_student(self) -> nn.Module:
        return materialize(self.student)

    def compression_metrics(self) -> dict[str, float]:
        weights = [self.student.get_submodule(p).weight for p in self.pruned_paths]
        return {"compress/sparsity": zero_fraction(weights), "compress/pruned_matrices": float(len(weights))}


def global_levels(importances: list[Tensor], keep: float) -> list[float]:
    """Per-matrix kept fractions that keep, together, the ``keep`` fraction of all entries with the largest
    importance (one ranking over every matrix: Sanh et al.'s ``--global_topk``). Entries tied at the cut
    (learned scores all start equal) are shared out in proportion to each matrix's ties."""
    flat = torch.cat([imp.flatten() for imp in importances])
    k = int(keep * flat.numel())
    if k >= flat.numel():
        return [1.0] * len(importances)
    if k <= 0:
        return [0.0] * len(importances)
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values  # the k-th largest
    above = [int((imp > threshold).sum()) for imp in importances]
    ties = [int((imp == threshold).sum()) for imp in importances]
    left = k - sum(above)
    return [(a + left * t / sum(ties)) / imp.numel() for a, t, imp in zip(above, ties, importances)]


class TopKPruning(Pruning):
    """Pruning to a target count: ``sparsity`` of the prunable weights removed at the end, ranked per matrix
    (``scope=layer``, the reference default) or over all of them (``scope=global``)."""

    def __init__(self, sparsity: float = 0.9, scope: str = "layer", **base: Any) -> None:
        super().__init__(**base)
        self.sparsity, self.scope = sparsity, scope

    @classmethod
    def validate_hparams(cls, sparsity: float, scope: str, **rest: Any) -> None:
        check_sparsity(sparsity)
        if scope not in SCOPES:
            raise ConfigError("technique.scope", scope, f"allowed: {', '.join(SCOPES)}")
        super().validate_hparams(**rest)

    def set_ramp(self, fraction: float) -> None:
        keep = 1.0 - self.sparsity * fraction
        masked = self.masked()
        if self.scope == "global":
            levels = global_levels([mask.importance(weight) for mask, weight in masked], keep)
        else:
            levels = [keep] * len(masked)
        for (mask, _), level in zip(masked, levels):
            mask.set_level(level)

    def compression_metrics(self) -> dict[str, float]:
        return {**super().compression_metrics(), "compress/target_sparsity": self.sparsity}
