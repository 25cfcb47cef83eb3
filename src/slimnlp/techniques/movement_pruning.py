"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning").

Every prunable weight gets a learned score ``S``; the forward pass uses ``W ⊙ M(S)`` and the straight-through
estimator gives ``∂L/∂S = ∂L/∂W' ⊙ W``, so a score grows when its weight moves away from zero — first-order
importance that magnitude pruning, which looks only at ``|W|``, cannot see when fine-tuning barely moves the
pretrained weights.

- ``variant=hard`` (the paper's "movement pruning", ``pruning_method=topK``): ``M`` keeps the top fraction
  of scores per matrix (or ``scope=global``), the fraction following the sparsity ramp to ``sparsity``.
- ``variant=soft`` (``sigmoied_threshold`` + ``regularization=l1``): ``M = σ(S) > τ``, with ``τ`` ramped to
  ``threshold`` and the penalty ``λ · mean_layers(Σσ(S)/n)`` with ``λ`` ramped to ``regularization``
  (``λ = final_λ · τ/τ_final`` in ``masked_run_glue.py``). The sparsity is *not* set: it follows from ``λ``,
  and ``compress/sparsity`` reports what it came to (``sparsity`` is not read).

Scores start at ``score_init`` (``mask_init=constant``, ``mask_scale=0``) and train in their own optimizer
group at ``score_lr`` (``mask_scores_learning_rate`` 1e-2) without weight decay, under the same LR schedule
as the weights, as in the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimnlp.errors import ConfigError
from slimnlp.modules.masking import ScoreThresholdMask, ScoreTopKMask, WeightMask
from slimnlp.techniques.pruning import TopKPruning

VARIANTS = ("hard", "soft")


class MovementPruning(TopKPruning):
    def __init__(
        self,
        variant: str = "hard",
        score_lr: float = 1e-2,
        score_init: float = 0.0,
        threshold: float = 0.1,
        regularization: float | None = 400.0,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.variant, self.score_lr, self.score_init = variant, score_lr, score_init
        self.final_threshold, self.final_lambda = threshold, regularization
        self.regularization_weight = 0.0

    @classmethod
    def validate_hparams(
        cls, variant: str, score_lr: float, threshold: float, regularization: float | None, **rest: Any
    ) -> None:
        if variant not in VARIANTS:
            raise ConfigError("technique.variant", variant, f"allowed: {', '.join(VARIANTS)}")
        if not score_lr > 0:
            raise ConfigError("technique.score_lr", score_lr, "the scores' learning rate must be > 0")
        if not 0.0 < threshold < 1.0:
            raise ConfigError("technique.threshold", threshold, "the final threshold on sigmoid(scores), in (0, 1)")
        if regularization is None and variant == "soft":  # a paper row leaves lambda to the user (it sets sparsity)
            raise ConfigError("technique.regularization", regularization, "lambda, the final L1 weight (a number >= 0): "
                              "soft movement needs one, and it decides how many weights are left")
        if regularization is not None and (isinstance(regularization, bool) or not regularization >= 0):
            raise ConfigError("technique.regularization", regularization, "the final L1 weight, >= 0")
        super().validate_hparams(**rest)

    def make_mask(self, weight: nn.Parameter) -> WeightMask:
        kind = ScoreTopKMask if self.variant == "hard" else ScoreThresholdMask
        return kind(weight.shape, init=self.score_init).to(weight.device)

    def scores(self) -> list[nn.Parameter]:
        return [mask.scores for mask in self.masks()]

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.scores(), "lr": self.score_lr, "weight_decay": 0.0}]

    def set_ramp(self, fraction: float) -> None:
        if self.variant == "hard":
            super().set_ramp(fraction)
            return
        for mask in self.masks():
            mask.set_level(self.final_threshold * fraction)
        self.regularization_weight = self.final_lambda * fraction

    def score_penalty(self) -> Tensor:
        """The reference's ``l1`` regularizer: the mean over matrices of ``Σ σ(S) / n``."""
        return torch.stack([torch.sigmoid(s).sum() / s.numel() for s in self.scores()]).mean()

    def training_loss(self, batch: Any) -> dict[str, Tensor]:
        losses = super().training_loss(batch)
        if self.variant == "soft":
            penalty = self.score_penalty()
            losses["loss"] = losses["loss"] + self.regularization_weight * penalty
            losses["loss/score_l1"] = penalty
        return losses

    def compression_metrics(self) -> dict[str, float]:
        metrics = super().compression_metrics()
        if self.variant == "soft":
            metrics.pop("compress/target_sparsity")
        return metrics
