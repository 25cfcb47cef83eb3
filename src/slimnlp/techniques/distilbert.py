"""DistilBERT's distillation objective, task-specific (Sanh et al. 2019, "DistilBERT, a distilled version of
BERT: smaller, faster, cheaper and lighter").

DistilBERT's pre-training loss is ``5·L_ce + 2·L_mlm + 1·L_cos`` (soft-target KL at τ = 2, masked-LM, and
the cosine between the last hidden states; weights from the reference ``distiller.py`` README). slimnlp's
task-specific variant puts the hard-label CE where ``L_mlm`` was and weighs it against the soft loss as the
authors' task-specific ``run_squad_w_distillation.py`` does (``alpha_ce = alpha_squad = 0.5``, τ = 2)::

    L = alpha·CE(z_S, y) + (1 − alpha)·τ²·KL(p_T^τ ‖ p_S^τ) + beta·L_cos
    L_cos = 1/N Σ_t (1 − cos(h_S,t, h_T,t))   over the N non-padding tokens of the last layer

``beta = 0.1`` keeps the pre-training ratio ``alpha_cos/alpha_ce = 1/5`` against the soft weight 0.5.
The MLM term is not included: it needs raw masked text and an MLM head, which the classifiers distilled
here do not have. The cosine compares hidden states directly, so student and teacher must have the same
width (DistilBERT halves the depth, not the width); use ``technique=tinybert`` for a projection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.losses.distilbert import cosine_hidden_loss
from slimnlp.losses.kd import kd_kl
from slimnlp.models import structure
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights

log = logging.getLogger(__name__)


class DistilBERT(Technique):
    def __init__(self, alpha: float = 0.5, temperature: float = 2.0, beta: float = 0.1, **base: Any) -> None:
        self.validate_hparams(alpha=alpha, temperature=temperature, beta=beta)
        super().__init__(**base)
        self.alpha, self.temperature, self.beta = alpha, temperature, beta
        log.info(
            "DistilBERT teacher layer -> student layer: %d -> %d (last hidden states, cosine)",
            structure.num_layers(self.teacher) - 1,
            structure.num_layers(self.student) - 1,
        )

    @classmethod
    def validate_hparams(cls, alpha: float, temperature: float, beta: float, **_: Any) -> None:
        check_kd_weights(alpha, temperature)
        if beta < 0:
            raise ConfigError("technique.beta", beta, "the weight of the cosine loss must be >= 0")

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(teacher=True, hidden_states=True)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        models.require_same(
            "hidden_size", "the cosine loss compares hidden states directly; use technique=tinybert for a projection"
        )

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out_S = self.student_outputs(batch)
        out_T = self.teacher_outputs(batch)
        ce = F.cross_entropy(out_S.logits, batch["labels"])
        kd = kd_kl(out_S.logits, out_T.logits, self.temperature)
        cos = cosine_hidden_loss(out_S.hidden_states[-1], out_T.hidden_states[-1], batch["attention_mask"])
        loss = self.alpha * ce + (1.0 - self.alpha) * kd + self.beta * cos
        return {"loss": loss, "loss/ce": ce, "loss/kd": kd, "loss/cos": cos}
