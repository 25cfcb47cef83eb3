"""L0 pruning: hard-concrete gates on the encoder's weights (Louizos, Welling & Kingma 2018), driven to a
target sparsity by a Lagrangian (Wang, Wohlwend & Lei 2020, "Structured Pruning of Large Language Models";
CoFi, Xia et al. 2022, whose ``l0_module`` is the reference read here).

Every prunable weight gets a gate ``z`` (``slimnlp.modules.masking.HardConcreteMask``): sampled in training;
in evaluation and the export, each matrix keeps its ``round(Σ P(z ≠ 0))`` gates with the largest ``log α``
(CoFi's deterministic gates, binary here), so the sparsity tested is the expected sparsity trained towards. The expected sparsity ``ŝ = 1 − Σ P(z ≠ 0) / n`` is
differentiable; the loss adds ``λ₁(ŝ − t) + λ₂(ŝ − t)²`` where ``t`` is the target ramped by the run's
``schedule`` (the default cubic ramp: CoFi warms its target up linearly, ``lagrangian_warmup``), and
``λ₁, λ₂`` (starting at 0) are trained by gradient *ascent* in their own optimizer group (CoFi's optimizer
with ``lr = −reg_learning_rate``), so the penalty grows for as long as the expected sparsity misses the target.
The gates' ``log α`` train in their own group at ``score_lr`` without weight decay.

Deviations: the gates are per weight (Louizos et al.'s unstructured form; CoFi gates heads, FFN units and
dimensions); ``init_drop`` (the authors' ``droprate_init``, 0.5 for training from scratch) defaults to 0.05,
whose expected L0 keeps 98.9% of the weights, so fine-pruning starts from the pretrained model almost intact;
kept weights are not rescaled at test time (CoFi multiplies them by a soft ``σ(0.8·log α/β)``). The sparsity
reached is measured on the exported weights (``compress/sparsity``); the controller approaches the target
rather than hitting it exactly, and the table says how close it came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from slimnlp.errors import ConfigError
from slimnlp.modules.masking import HardConcreteMask, materialize
from slimnlp.techniques.pruning import Pruning, check_sparsity


class L0Pruning(Pruning):
    def __init__(
        self,
        sparsity: float = 0.9,
        score_lr: float = 0.01,
        lagrangian_lr: float = 0.01,
        init_drop: float = 0.05,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.sparsity, self.score_lr, self.lagrangian_lr, self.init_drop = sparsity, score_lr, lagrangian_lr, init_drop
        self.lambdas = nn.Parameter(torch.zeros(2))  # λ₁, λ₂: maximized (their own group)
        self.target = 0.0

    @classmethod
    def validate_hparams(
        cls, sparsity: float, score_lr: float, lagrangian_lr: float, init_drop: float, **rest: Any
    ) -> None:
        check_sparsity(sparsity)
        for key, value in (("score_lr", score_lr), ("lagrangian_lr", lagrangian_lr)):
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"technique.{key}", value, "a learning rate > 0")
        if not isinstance(init_drop, int | float) or not 0.0 < init_drop < 1.0:
            raise ConfigError("technique.init_drop", init_drop, "the gates' initial drop rate, in (0, 1)")
        super().validate_hparams(**rest)

    def make_mask(self, weight: nn.Parameter) -> HardConcreteMask:
        return HardConcreteMask(weight.shape, init_drop=self.init_drop).to(weight.device)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [
            {"params": [gate.log_alpha for gate in self.masks()], "lr": self.score_lr, "weight_decay": 0.0},
            {"params": [self.lambdas], "lr": self.lagrangian_lr, "weight_decay": 0.0, "maximize": True},
        ]

    def set_ramp(self, fraction: float) -> None:
        self.target = self.sparsity * fraction

    def expected_sparsity(self) -> Tensor:
        gates = self.masks()
        kept = torch.stack([gate.expected_nonzero() for gate in gates]).sum()
        return 1.0 - kept / sum(gate.log_alpha.numel() for gate in gates)

    def lagrangian(self, expected: Tensor) -> Tensor:
        gap = expected - self.target
        return self.lambdas[0] * gap + self.lambdas[1] * gap**2

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses = super().training_loss(batch)
        expected = self.expected_sparsity()
        penalty = self.lagrangian(expected)
        losses["loss"] = losses["loss"] + penalty
        losses["loss/lagrangian"] = penalty
        losses["prune/expected_sparsity"] = expected.detach()
        losses["prune/target_sparsity"] = torch.tensor(self.target)
        return losses

    def export_student(self) -> nn.Module:
        self.student.eval()  # the test-time gates are the ones folded into the weights
        return materialize(self.student)

    def compression_metrics(self) -> dict[str, float]:
        return {**super().compression_metrics(), "compress/target_sparsity": self.sparsity}
