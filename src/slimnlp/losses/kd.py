"""Logit distillation losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_kl(logits_S: Tensor, logits_T: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    ``L = τ² · KL(p_T^τ ‖ p_S^τ)`` with ``p^τ = softmax(z / τ)``, averaged over the batch.
    The τ² factor keeps the soft-target gradients on the same scale as the hard-label loss when τ
    changes (the gradient of the KL term shrinks as 1/τ²).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_S = F.log_softmax(logits_S / temperature, dim=-1)
    log_p_T = F.log_softmax(logits_T / temperature, dim=-1)
    kl = F.kl_div(log_p_S, log_p_T, reduction="batchmean", log_target=True)
    return kl * temperature**2


def logits_mse(logits_S: Tensor, logits_T: Tensor) -> Tensor:
    """Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks".

    ``L = ‖z_S − z_T‖²₂`` on raw logits, averaged over batch and classes: no temperature, and it
    keeps the teacher's logit scale that softmax throws away.
    """
    return F.mse_loss(logits_S, logits_T)


SOFT_CE_REDUCTIONS = ("batchmean", "mean")


def soft_cross_entropy(
    logits_S: Tensor, logits_T: Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """``−Σ p_T^τ · log p_S^τ``: KL plus the teacher's entropy, a constant for the student.

    ``reduction="batchmean"`` sums over classes and averages over the batch (the cross-entropy per example);
    ``"mean"`` averages over batch *and* classes, 1/C of it, as TinyBERT's ``task_distill.py`` reduces it
    (``(-targets_prob * student_likelihood).mean()``).
    """
    if reduction not in SOFT_CE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {SOFT_CE_REDUCTIONS}, got {reduction!r}")
    p_T = F.softmax(logits_T / temperature, dim=-1)
    per_class = -(p_T * F.log_softmax(logits_S / temperature, dim=-1))
    return per_class.mean() if reduction == "mean" else per_class.sum(-1).mean()


__all__ = ["kd_kl", "logits_mse", "soft_cross_entropy"]
