"""DistilBERT's task-specific distillation (Sanh et al. 2019, "DistilBERT, a distilled version of BERT: smaller,
faster, cheaper and lighter").

The authors' task-specific recipe (``examples/research_projects/distillation/run_squad_w_distillation.py``) is
``alpha_ce·L_ce + alpha_squad·L_task``: the soft-target loss ``τ²·KL(p_T^τ ‖ p_S^τ)`` (``KLDivLoss``
'batchmean') at τ = 2 and the task's own cross-entropy, 0.5 each. Here::

    L = alpha·CE(z_S, y) + (1 − alpha)·τ²·KL(p_T^τ ‖ p_S^τ) [+ cosine_weight·L_cos]

``alpha`` is ``alpha_squad / (alpha_ce + alpha_squad)``; the reference's 0.5/0.5 is ``alpha = 0.5``, and any
other pair is that ``alpha`` with the loss scaled by their sum (an LR factor under Adam).

The cosine term ``L_cos = 1/N Σ_t (1 − cos(h_S,t, h_T,t))`` over the N non-padding tokens of the last layer
belongs to DistilBERT's *pre-training* loss (``5·L_ce + 2·L_mlm + 1·L_cos``, ``distiller.py``); it is off by
default and available as ``cosine_weight`` (0.1 keeps the pre-training ratio ``alpha_cos/alpha_ce = 1/5``
against the soft weight 0.5). It compares hidden states directly, so it needs equal widths; without it any
student shape distils.

The authors' student initialisation (teacher layers 0, 2, 4, 7, 9, 11 of BERT-base, ``extract_distilbert.py``)
is ``student.init=distilbert`` (``slimnlp.models.students.distilbert_layer_map``), this technique's default for
students cut from the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.losses.distilbert import cosine_hidden_loss
from slimnlp.losses.kd import kd_kl
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights


class DistilBERT(Technique):
    def __init__(
        self, alpha: float = 0.5, temperature: float = 2.0, cosine_weight: float = 0.0, **base: Any
    ) -> None:
        self.validate_hparams(alpha=alpha, temperature=temperature, cosine_weight=cosine_weight)
        super().__init__(**base)
        self.alpha, self.temperature, self.cosine_weight = alpha, temperature, cosine_weight

    @classmethod
    def validate_hparams(cls, alpha: float, temperature: float, cosine_weight: float, **_: Any) -> None:
        check_kd_weights(alpha, temperature)
        if not isinstance(cosine_weight, (int, float)) or isinstance(cosine_weight, bool) or cosine_weight < 0:
            raise ConfigError(
                "technique.cosine_weight", cosine_weight, "the weight of the cosine hidden-state loss, >= 0 (0: off)"
            )

    @classmethod
    def requirements(cls, cosine_weight: float = 0.0, **_: Any) -> Requirements:
        if cosine_weight > 0:
            return Requirements(teacher=True, hidden_states=True)
        return Requirements(teacher=True, cacheable_teacher_logits=True)  # logits only: the disk cache may serve them

    @classmethod
    def check_models(cls, models: ModelConfigs, cosine_weight: float = 0.0, **_: Any) -> None:
        if cosine_weight > 0:
            models.require_same(
                "hidden_size",
                "the cosine loss (cosine_weight > 0) compares hidden states directly; set technique.cosine_weight=0 "
                "or use technique=tinybert for a projection",
            )

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.cosine_weight > 0:
            out_S, out_T = self.student_outputs(batch), self.teacher_outputs(batch)
            logits_S, logits_T = out_S.logits, out_T.logits
        else:
            logits_S, logits_T = self(batch), self.teacher_logits(batch)
        ce = F.cross_entropy(logits_S, batch["labels"])
        kd = kd_kl(logits_S, logits_T, self.temperature)
        loss = self.alpha * ce + (1.0 - self.alpha) * kd
        losses = {"loss/ce": ce, "loss/kd": kd}
        if self.cosine_weight > 0:
            cos = cosine_hidden_loss(out_S.hidden_states[-1], out_T.hidden_states[-1], batch["attention_mask"])
            loss = loss + self.cosine_weight * cos
            losses["loss/cos"] = cos
        return {"loss": loss, **losses}
