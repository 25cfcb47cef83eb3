"""MixKD: distillation on mixup interpolations in word-embedding space.

Liang et al. 2021 (ICLR), "MixKD: Towards Efficient Distillation of Large-scale Language Models". Pairs of
training examples ``(x_i, x_j)`` are mixed as ``ê = λ·E(x_i) + (1−λ)·E(x_j)``, ``λ ~ Beta(α_mix, α_mix)``,
and the student imitates the teacher on the originals *and* on the mixed inputs (teacher-mixup KD), while
also fitting the mixed labels ``ỹ = λ·y_i + (1−λ)·y_j`` (student mixup)::

    L = α·CE(z_S(x), y) + (1−α)·D(z_S(x), z_T(x))          # hard labels + KD on the originals
        + w_tmkd·D(z_S(ê_S), z_T(ê_T))                      # KD on the mixed inputs   (loss/kd_mix)
        + w_sm·CE(z_S(ê_S), ỹ)                              # student mixup            (loss/sm)

``D`` is ``τ²·KL(p_T^τ ‖ p_S^τ)`` (``loss=kl``) or the logit MSE (``loss=mse``). The paper's third
ingredient, back-translation augmentation, is a data pipeline, not a loss, and is not part of this module.

Teacher and student share the tokenizer but not the embedding table: each mixes in its *own* embedding
space from the same ``(i, j, λ)``, so both see "the same" interpolated sentence. Token-type embeddings are
mixed along with the words (exact for sentence-pair tasks), and a position is attended when a sentence
with non-zero weight has a real token there (the union of both masks for ``0 < λ < 1``, exactly the
original mask at ``λ = 1``). ``λ`` and the pairing come from one seeded NumPy generator whose state is
checkpointed, so a resumed run draws the same mixes. The teacher's outputs on mixed inputs are new every
step, so nothing here can come from the teacher-logit cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from slimnlp.errors import ConfigError
from slimnlp.losses.kd import kd_kl, logits_mse
from slimnlp.losses.mixkd import mixup, sample_mixup_lambda
from slimnlp.models import structure
from slimnlp.techniques.base import Requirements, Technique
from slimnlp.techniques.kd import LOSSES, check_kd_weights

RNG_STATE_KEY = "mixkd_rng_state"


def mixed_inputs(
    model: PreTrainedModel, batch: Mapping[str, Tensor], lam: float, perm: Tensor
) -> dict[str, Tensor]:
    """Keyword arguments that run ``model`` on the mixup of each example with its partner ``perm[i]``.

    Word (+ token-type) embeddings are interpolated in ``model``'s own space and passed as
    ``inputs_embeds``; the token-type term the model adds back for ``token_type_ids = 0`` is subtracted
    first, so the embedding sum the encoder sees is exactly ``λ·emb_i + (1−λ)·emb_j``.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    emb = model.get_input_embeddings()(ids)
    type_table = getattr(structure.embeddings(model), "token_type_embeddings", None)
    types = batch.get("token_type_ids")
    extra: dict[str, Tensor] = {}
    if type_table is not None and types is not None:
        emb = emb + type_table(types)
        zeros = torch.zeros_like(types)
        emb = emb - type_table(zeros)
        extra["token_type_ids"] = zeros
    keep_i = mask * int(lam > 0.0)
    keep_j = mask[perm] * int(lam < 1.0)
    return {"inputs_embeds": mixup(emb, lam, perm), "attention_mask": torch.maximum(keep_i, keep_j), **extra}


class MixKD(Technique):
    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 4.0,
        loss: str = "mse",
        mix_alpha: float = 0.4,
        tmkd_weight: float = 1.0,
        sm_weight: float = 1.0,
        seed: int | None = None,
        **base: Any,
    ) -> None:
        self.validate_hparams(
            alpha=alpha,
            temperature=temperature,
            loss=loss,
            mix_alpha=mix_alpha,
            tmkd_weight=tmkd_weight,
            sm_weight=sm_weight,
            seed=seed,
        )
        super().__init__(**base)
        self.alpha, self.temperature, self.loss_kind = alpha, temperature, loss
        self.mix_alpha, self.tmkd_weight, self.sm_weight = mix_alpha, tmkd_weight, sm_weight
        # null seed: the run seed (the runner seeds torch before building the technique)
        self.rng = np.random.default_rng(torch.initial_seed() if seed is None else seed)

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(teacher=True)  # teacher outputs on mixed inputs are new every step: no cache

    @classmethod
    def validate_hparams(
        cls,
        alpha: float,
        temperature: float,
        loss: str,
        mix_alpha: float,
        tmkd_weight: float,
        sm_weight: float,
        seed: int | None,
        **_: Any,
    ) -> None:
        check_kd_weights(alpha, temperature)
        if loss not in LOSSES:
            raise ConfigError("technique.loss", loss, f"allowed: {', '.join(LOSSES)}")
        if not mix_alpha > 0:
            raise ConfigError("technique.mix_alpha", mix_alpha, "the Beta(α, α) parameter of λ must be > 0")
        for key, value in (("tmkd_weight", tmkd_weight), ("sm_weight", sm_weight)):
            if value < 0:
                raise ConfigError(f"technique.{key}", value, "a loss weight must be >= 0")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError("technique.seed", seed, "null (the run seed) or an integer >= 0")

    def draw_mix(self, batch_size: int) -> tuple[float, Tensor]:
        """``λ ~ Beta(α_mix, α_mix)`` and a random partner for every example, from the seeded generator."""
        lam = sample_mixup_lambda(self.mix_alpha, self.rng)
        perm = torch.from_numpy(self.rng.permutation(batch_size)).to(self.device)
        return lam, perm

    def distance(self, logits_S: Tensor, logits_T: Tensor) -> Tensor:
        if self.loss_kind == "kl":
            return kd_kl(logits_S, logits_T, self.temperature)
        return logits_mse(logits_S, logits_T)

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        labels = batch["labels"]
        logits_S = self(batch)
        logits_T = self.teacher_outputs(batch).logits
        ce = F.cross_entropy(logits_S, labels)
        kd = self.distance(logits_S, logits_T)

        lam, perm = self.draw_mix(labels.shape[0])
        mixed_logits_S = self.student(**mixed_inputs(self.student, batch, lam, perm)).logits
        with torch.no_grad():
            mixed_logits_T = self.teacher(**mixed_inputs(self.teacher, batch, lam, perm)).logits
        kd_mix = self.distance(mixed_logits_S, mixed_logits_T)
        mixed_labels = mixup(F.one_hot(labels, mixed_logits_S.shape[-1]).float(), lam, perm)
        sm = F.cross_entropy(mixed_logits_S, mixed_labels)

        total = self.alpha * ce + (1 - self.alpha) * kd + self.tmkd_weight * kd_mix + self.sm_weight * sm
        return {
            "loss": total,
            "loss/ce": ce,
            "loss/kd": kd,
            "loss/kd_mix": kd_mix,
            "loss/sm": sm,
            "mix/lambda": torch.tensor(lam),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_STATE_KEY] = self.rng.bit_generator.state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_STATE_KEY in checkpoint:
            self.rng.bit_generator.state = checkpoint[RNG_STATE_KEY]
