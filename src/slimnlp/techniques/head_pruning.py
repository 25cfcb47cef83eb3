"""Head pruning by importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?"),
extended to FFN units, then materialized: a physically smaller encoder.

As in the authors' procedure (HF ``examples/research_projects/bertology/run_bertology.py``): a head's
importance is ``Σ_batches |∂L/∂ξ_h|``, the gradient of the task loss with respect to a gate ``ξ_h`` on the
head's output, accumulated over batches and divided by the number of tokens; importances are normalized per
layer by their L2 norm; then heads are pruned iteratively, each round gating off the ``round_fraction`` (10%)
of all heads with the lowest importance among those still on, importance recomputed on the pruned model,
until ``head_sparsity`` of the heads are off. ``ffn_sparsity`` does the same, in the same rounds, for FFN units
(a gate on each unit's activation: the same first-order Taylor importance, as in Molchanov et al. 2019 and
Kwon et al. 2022's structured BERT pruning). After pruning, the student is fine-tuned (``distill``: with the
teacher's soft loss) with the gates fixed, and ``export_student`` slices the gated-off heads and units out.

Deviations, each deliberate: importance is computed on ``importance_examples`` training examples (a seeded
subset), not on the dev set the reference script uses, so the dev set stays a clean model-selection split;
the reference's global min–max rescaling is left out because it cannot change which heads are lowest; the
reference stops at a score threshold, here at a target count (what a compression budget names); every layer
keeps at least one head and one unit. Michel et al. prune a model already fine-tuned on the task: with
``student.init_from=finetuned`` that is this setting (``prune_at=0``); from pretrained weights set ``prune_at``
to the fraction of training to fine-tune densely first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.gates import HeadAndUnitGates
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.pruning import DistilledPruning, sliced_shape_metrics

log = logging.getLogger(__name__)


def _fraction(key: str, value: Any) -> None:
    if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(key, value, "a fraction in [0, 1)")


def lowest_to_gate(importance: Tensor, gates: Tensor, count: int) -> list[tuple[int, int]]:
    """``(layer, index)`` of the ``count`` least important entries still on, never the last one on in a layer
    (ties broken by position, as ``torch.sort`` does in the reference)."""
    score = importance.clone()
    score[gates == 0] = math.inf
    chosen: list[tuple[int, int]] = []
    on = gates.sum(1).long().tolist()
    for flat in score.flatten().argsort(stable=True).tolist():
        if len(chosen) == count:
            break
        layer, index = divmod(flat, score.shape[1])
        if math.isinf(float(score[layer, index])) or on[layer] <= 1:
            continue
        chosen.append((layer, index))
        on[layer] -= 1
    return chosen


def layer_normalized(importance: Tensor) -> Tensor:
    """Each layer's importances divided by their L2 norm (the reference's default ``exponent=2``)."""
    return importance / (importance.norm(p=2, dim=-1, keepdim=True) + 1e-20)


class HeadPruning(DistilledPruning):
    """Iterative importance pruning of attention heads (and FFN units), materialized by slicing."""

    def __init__(
        self,
        head_sparsity: float = 0.5,
        ffn_sparsity: float = 0.0,
        round_fraction: float = 0.1,
        importance_examples: int = 512,
        prune_at: float = 0.0,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.head_sparsity, self.ffn_sparsity = head_sparsity, ffn_sparsity
        self.round_fraction, self.importance_examples, self.prune_at = round_fraction, importance_examples, prune_at
        self.gates = HeadAndUnitGates(self.student)
        self.register_buffer("pruned", torch.tensor(False))  # checkpointed: a resumed run does not prune twice

    @classmethod
    def validate_hparams(
        cls, head_sparsity: float, ffn_sparsity: float, round_fraction: float, importance_examples: int,
        prune_at: float, **rest: Any,
    ) -> None:
        _fraction("technique.head_sparsity", head_sparsity)
        _fraction("technique.ffn_sparsity", ffn_sparsity)
        _fraction("technique.prune_at", prune_at)
        if not isinstance(round_fraction, int | float) or not 0.0 < round_fraction <= 1.0:
            raise ConfigError("technique.round_fraction", round_fraction, "the share of heads gated per round, in (0, 1]")
        if not isinstance(importance_examples, int) or importance_examples < 1:
            raise ConfigError("technique.importance_examples", importance_examples, "a positive number of examples")
        super().validate_hparams(**rest)

    @classmethod
    def check_models(
        cls, models: ModelConfigs, head_sparsity: float = 0.5, ffn_sparsity: float = 0.0, **_: Any
    ) -> None:
        shape = structure.shape(models.student)
        if head_sparsity > 0:
            structure.check_heads_removable(models.student, "student.model_type")
        for key, value, per_layer in (("head_sparsity", head_sparsity, shape.heads), ("ffn_sparsity", ffn_sparsity, shape.ffn)):
            asked, most = round(value * shape.layers * per_layer), shape.layers * (per_layer - 1)
            if asked > most:
                raise ConfigError(f"technique.{key}", value, f"at most {most} of the student's "
                                  f"{shape.layers * per_layer} can go (every layer keeps one); {asked} asked")

    def targets(self) -> dict[str, int]:
        """How many heads and units end gated off."""
        return {"heads": round(self.head_sparsity * self.gates.heads.numel()),
                "units": round(self.ffn_sparsity * self.gates.units.numel())}

    # ------------------------------------------------------------------ pruning
    def prepare_student(self) -> None:
        self.gates.attach(self.student)

    def on_train_start(self) -> None:
        super().on_train_start()
        if not bool(self.pruned) and self.prune_at == 0.0:
            self.prune(self.importance_batches())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if not bool(self.pruned) and self.global_step >= self.prune_at * total:
            self.prune(self.importance_batches())

    def importance_batches(self) -> Iterable[Mapping[str, Tensor]]:
        return self.trainer.datamodule.calibration_dataloader(self.importance_examples)

    def gate_gradients(self, batches: Iterable[Mapping[str, Tensor]], power: int = 1) -> tuple[Tensor, Tensor]:
        """``Σ_batches |∂L/∂gate|^power / tokens`` for heads and units (summed over DDP ranks): with
        ``power=1`` the reference's unnormalized importance; ``power=2`` is the empirical Fisher of the gates
        (Kwon et al. 2022), whose sum estimates the loss increase of removing a set of them."""
        heads, units = torch.zeros_like(self.gates.heads), torch.zeros_like(self.gates.units)
        tokens = torch.zeros((), device=self.device)
        was_training = self.student.training
        self.student.eval()  # no dropout while measuring, as the reference (model.eval())
        self.gates.heads.requires_grad_(True)
        self.gates.units.requires_grad_(True)
        try:
            for batch in batches:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.student(**model_inputs(batch)).logits
                loss = F.cross_entropy(logits, batch["labels"])
                grad_heads, grad_units = torch.autograd.grad(loss, [self.gates.heads, self.gates.units])
                heads += grad_heads.abs() ** power
                units += grad_units.abs() ** power
                tokens += batch["attention_mask"].sum()
        finally:
            self.gates.heads.requires_grad_(False)
            self.gates.units.requires_grad_(False)
            self.student.train(was_training)
        if self._trainer is not None:
            heads, units, tokens = (self.trainer.strategy.reduce(t, reduce_op="sum") for t in (heads, units, tokens))
        return heads / tokens, units / tokens

    def prune(self, batches: Iterable[Mapping[str, Tensor]]) -> int:
        """Gate off the targets' heads and units, ``round_fraction`` of each per round, the importance
        recomputed on the gated model every round; returns the number of rounds."""
        want = self.targets()
        rounds = 0
        while True:
            off = {"heads": int((self.gates.heads == 0).sum()), "units": int((self.gates.units == 0).sum())}
            if off == want:
                break
            importance = dict(zip(("heads", "units"), map(layer_normalized, self.gate_gradients(batches))))
            for name, gates in (("heads", self.gates.heads), ("units", self.gates.units)):
                step = max(1, int(self.round_fraction * gates.numel()))
                for layer, index in lowest_to_gate(importance[name], gates, min(step, want[name] - off[name])):
                    gates[layer, index] = 0.0
            rounds += 1
        self.pruned.fill_(True)
        kept = self.gates.kept()
        log.info("head pruning: %d rounds, %d of %d heads and %d of %d FFN units kept", rounds, kept["heads"],
                 self.gates.heads.numel(), kept["units"], self.gates.units.numel())
        return rounds

    # ------------------------------------------------------------------ training and export
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses = self.task_loss(batch)
        kept = self.gates.kept()
        losses["prune/heads_kept"] = torch.tensor(kept["heads"])
        losses["prune/units_kept"] = torch.tensor(kept["units"])
        return losses

    def export_student(self) -> PreTrainedModel:
        return self.gates.materialize(self.student)

    def compression_metrics(self) -> dict[str, float]:
        return sliced_shape_metrics(self.student, self.gates.heads.numel(), self.gates.units.numel())
