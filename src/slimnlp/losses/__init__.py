"""Distillation losses as pure functions of tensors (no Lightning, no Hydra)."""

from slimnlp.losses.kd import kd_kl, logits_mse

__all__ = ["kd_kl", "logits_mse"]
