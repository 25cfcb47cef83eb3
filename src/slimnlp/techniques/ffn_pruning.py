"""Structured movement pruning of whole heads and FFN units, materialized (Lagunas, Charlaix, Sanh & Rush 2021,
"Block Pruning For Faster Transformers"; their ``nn_pruning`` library).

Lagunas et al. give movement scores to *blocks* of a weight matrix (``M = top-k(S)`` repeated over each
block, ``∂L/∂S_b = Σ_{ij∈b} ∂L/∂W'_ij · W_ij``) and prune rows and columns of the FFN and whole heads of
attention, because only empty rows, columns and heads can be cut out for speed. Here the blocks are exactly
those: one score per head, on that head's columns of the attention output projection, and one score per group
of ``ffn_block`` adjacent FFN units, on those units' columns of the FFN's second Linear. A score multiplies
the block through a gate (``slimnlp.modules.gates``), so its straight-through gradient is the block movement
above, and a block that ends pruned leaves nothing behind: the export slices it out (``models/surgery.py``),
exactly, with no bias to fold. The kept fraction follows the run's ``schedule`` (default: the cubic ramp of
movement pruning, dense for 10% of the steps, at the target for the last 20%) to ``head_sparsity`` and
``ffn_sparsity``, per layer (each layer keeps the same count, so every layer keeps at least one head; the
uniform FFN width lets the folder reload with plain ``from_pretrained`` when no head is pruned). Scores start at
0 and train in their own group at ``score_lr`` (the reference's 1e-2) without weight decay.

Deviations: the scores are the hard top-k variant (the paper's best speed results use soft movement with
a threshold and L1; the sparsity it lands on is then not set in advance); the blocks of the q/k/v
projections are not scored separately (a head is cut whole, through its output columns); the "hybrid filled"
re-densifying of partly pruned attention is moot, since heads are kept or cut whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.gates import HeadAndUnitGates
from slimnlp.modules.masking import straight_through_top_fraction
from slimnlp.schedules import Schedule
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.pruning import DEFAULT_RAMP, DistilledPruning, check_sparsity, sliced_shape_metrics


class FFNPruning(DistilledPruning):
    """Movement scores on heads and FFN-unit blocks, per-layer top-k along the ramp, sliced at export."""

    def __init__(
        self,
        head_sparsity: float = 0.0,
        ffn_sparsity: float = 0.5,
        ffn_block: int = 1,
        score_lr: float = 1e-2,
        schedule: Schedule | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.head_sparsity, self.ffn_sparsity, self.ffn_block, self.score_lr = (
            head_sparsity, ffn_sparsity, ffn_block, score_lr)
        self.schedule = schedule or DEFAULT_RAMP
        layers, heads = structure.num_layers(self.student), structure.num_attention_heads(self.student)
        self.head_scores = nn.Parameter(torch.zeros(layers, heads))
        self.unit_scores = nn.Parameter(torch.zeros(layers, structure.intermediate_size(self.student) // ffn_block))
        self.gates = HeadAndUnitGates(self.student)
        self.register_buffer("ramp_fraction", torch.tensor(0.0))  # checkpointed with the scores
        self.exported = False

    @classmethod
    def validate_hparams(
        cls, head_sparsity: float, ffn_sparsity: float, ffn_block: int, score_lr: float, **rest: Any
    ) -> None:
        check_sparsity(head_sparsity, "technique.head_sparsity")
        check_sparsity(ffn_sparsity, "technique.ffn_sparsity")
        if not isinstance(ffn_block, int) or isinstance(ffn_block, bool) or ffn_block < 1:
            raise ConfigError("technique.ffn_block", ffn_block, "a positive number of adjacent FFN units per score")
        if not isinstance(score_lr, int | float) or not score_lr > 0:
            raise ConfigError("technique.score_lr", score_lr, "the scores' learning rate, > 0")
        super().validate_hparams(**rest)

    @classmethod
    def check_models(
        cls, models: ModelConfigs, head_sparsity: float = 0.0, ffn_block: int = 1, **_: Any
    ) -> None:
        shape = structure.shape(models.student)
        if shape.ffn % ffn_block:
            raise ConfigError("technique.ffn_block", ffn_block,
                              f"a divisor of the student's FFN width {shape.ffn} (blocks tile the matrix)")
        if head_sparsity > 0:
            structure.check_heads_removable(models.student, "student.model_type")
            if round((1 - head_sparsity) * shape.heads) < 1:
                raise ConfigError("technique.head_sparsity", head_sparsity,
                                  f"at most {(shape.heads - 1) / shape.heads:.3f}: each layer keeps one of its "
                                  f"{shape.heads} heads")

    # ------------------------------------------------------------------ masks
    def prepare_student(self) -> None:
        self.gates.attach(self.student)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.head_scores, self.unit_scores], "lr": self.score_lr, "weight_decay": 0.0}]

    def kept_per_layer(self) -> tuple[int, int]:
        """Heads and FFN blocks each layer keeps at the current point of the ramp."""
        fraction = float(self.ramp_fraction)
        heads, blocks = self.head_scores.shape[1], self.unit_scores.shape[1]
        return (max(1, round((1 - self.head_sparsity * fraction) * heads)),
                max(1, round((1 - self.ffn_sparsity * fraction) * blocks)))

    def set_gates(self) -> None:
        """Gates from the scores: each layer's top-k heads and FFN blocks, straight-through to the scores."""
        keep_heads, keep_blocks = self.kept_per_layer()
        heads = torch.stack([straight_through_top_fraction(s, keep_heads / s.numel()) for s in self.head_scores])
        blocks = torch.stack([straight_through_top_fraction(s, keep_blocks / s.numel()) for s in self.unit_scores])
        self.gates.heads = heads
        self.gates.units = blocks.repeat_interleave(self.ffn_block, dim=1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        self.set_gates()
        return super().forward(batch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        self.ramp_fraction.fill_(self.schedule(min(self.global_step, total), total))

    def on_train_end(self) -> None:
        self.ramp_fraction.fill_(self.schedule(1, 1))

    # ------------------------------------------------------------------ training and export
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses = self.task_loss(batch)
        keep_heads, keep_blocks = self.kept_per_layer()
        losses["prune/heads_kept_per_layer"] = torch.tensor(float(keep_heads))
        losses["prune/ffn_blocks_kept_per_layer"] = torch.tensor(float(keep_blocks))
        return losses

    @torch.no_grad()
    def export_student(self) -> PreTrainedModel:
        if self.exported:
            return self.student
        self.ramp_fraction.fill_(self.schedule(1, 1))
        self.set_gates()
        self.gates.heads, self.gates.units = self.gates.heads.detach(), self.gates.units.detach()
        self.exported = True
        return self.gates.materialize(self.student)

    def compression_metrics(self) -> dict[str, float]:
        return sliced_shape_metrics(self.student, self.head_scores.numel(), self.unit_scores.numel() * self.ffn_block)
