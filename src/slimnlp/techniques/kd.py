"""Logit distillation from a frozen, fine-tuned teacher.

``loss=kl``: Hinton et al. 2015 — ``α·CE(z_S, y) + (1−α)·τ²·KL(p_T^τ ‖ p_S^τ)``.
``loss=mse``: Tang et al. 2019 — ``α·CE(z_S, y) + (1−α)·‖z_S − z_T‖²``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.losses.kd import kd_kl, logits_mse
from slimnlp.techniques.base import Requirements, Technique

LOSSES = ("kl", "mse")


def check_kd_weights(alpha: float, temperature: float, key: str = "technique") -> None:
    """Shared by every technique with a Hinton-style soft loss."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{key}.alpha", alpha, "the weight of the hard-label loss must lie in [0, 1]")
    if temperature <= 0:
        raise ConfigError(f"{key}.temperature", temperature, "the softmax temperature must be > 0")


def hinton_losses(
    logits_S: Tensor, logits_T: Tensor, labels: Tensor, alpha: float, temperature: float
) -> dict[str, Tensor]:
    """``α·CE + (1−α)·τ²·KL(p_T^τ ‖ p_S^τ)`` with its parts, for every technique whose distillation is logits
    only (``kd``, the pruning techniques' optional KD term)."""
    ce = F.cross_entropy(logits_S, labels)
    soft = kd_kl(logits_S, logits_T, temperature)
    return {"loss": alpha * ce + (1.0 - alpha) * soft, "loss/ce": ce, "loss/kd": soft}


def check_optional_kd(distill: Any, alpha: float, temperature: float) -> None:
    """``distill``/``alpha``/``temperature`` of a technique whose teacher term is optional."""
    if not isinstance(distill, bool):
        raise ConfigError("technique.distill", distill, "true (add the teacher's soft loss) or false")
    check_kd_weights(alpha, temperature)


def kd_or_ce(logits_S: Tensor, labels: Tensor, logits_T: Tensor | None, alpha: float,
             temperature: float) -> dict[str, Tensor]:
    """``hinton_losses`` when there are teacher logits, the task's CE alone when there are none."""
    if logits_T is not None:
        return hinton_losses(logits_S, logits_T, labels, alpha, temperature)
    ce = F.cross_entropy(logits_S, labels)
    return {"loss": ce, "loss/ce": ce}


class LogitKD(Technique):
    def __init__(self, alpha: float = 0.5, temperature: float = 4.0, loss: str = "kl", **base: Any) -> None:
        self.validate_hparams(alpha=alpha, temperature=temperature, loss=loss)
        super().__init__(**base)
        self.alpha, self.temperature, self.loss_kind = alpha, temperature, loss

    @classmethod
    def validate_hparams(cls, alpha: float, temperature: float, loss: str, **_: Any) -> None:
        check_kd_weights(alpha, temperature)
        if loss not in LOSSES:
            raise ConfigError("technique.loss", loss, f"allowed: {', '.join(LOSSES)}")

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(teacher=True, cacheable_teacher_logits=True)

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits_S = self(batch)
        logits_T = self.teacher_logits(batch)
        if self.loss_kind == "kl":
            return hinton_losses(logits_S, logits_T, batch["labels"], self.alpha, self.temperature)
        ce = F.cross_entropy(logits_S, batch["labels"])
        soft = logits_mse(logits_S, logits_T)
        return {"loss": self.alpha * ce + (1.0 - self.alpha) * soft, "loss/ce": ce, "loss/kd": soft}
