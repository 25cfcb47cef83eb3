"""Self-attention distillation: MiniLM (Wang et al. 2020) and MiniLMv2 (Wang et al. 2021).

- ``technique=minilm`` — "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
  Pre-Trained Transformers": the teacher's *last* layer teaches the student's last layer its attention
  distributions ``A = softmax(QKᵀ/√d_k)`` and value relations ``VR = softmax(VVᵀ/√d_k)``, both by KL:
  ``L_MiniLM = L_AT + L_VR``. Needs equal head counts (the widths may differ).
- ``technique=minilm_v2`` — "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing
  Pretrained Transformers": Q-Q, K-K and V-V relations after re-splitting the concatenated heads into
  ``relation_heads`` heads, so head counts and widths may differ: ``L_MiniLMv2 = L_QQ + L_KK + L_VV``,
  from a chosen teacher layer (the last for base-size teachers, an upper-middle one for large ones) to
  the student's last layer.

The papers distil task-agnostically on raw text and then fine-tune. Here the distillation runs on the
task's data, so it is combined with the prediction-layer loss of ``technique=kd`` in one objective
(``alpha`` = weight of the hard-label CE, as in ``kd.yaml``)::

    L = alpha·CE(z_S, y) + (1 − alpha)·τ²·KL(p_T^τ ‖ p_S^τ) + beta·L_MiniLM(v2)

The attention distributions are computed from the captured queries and keys
(``slimnlp.models.capture``), not read from HF's ``attentions``: those are taken *after* attention
dropout, so a training student's maps would have zeroed entries whose log makes the KL explode, while
the papers define ``A`` before dropout. Capturing also works under sdpa attention. It cannot see MPNet's
relative position bias, so MiniLM v1 refuses MPNet models (v2's relations do not involve the scores).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.losses.kd import kd_kl
from slimnlp.losses.minilm import attention_kl, relation_kl, value_relation_kl
from slimnlp.models import structure
from slimnlp.models.capture import QKV, attention_scores, capture_qkv
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights

log = logging.getLogger(__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def captured(qkv_by_layer: Mapping[int, QKV], layer: int, side: str) -> QKV:
    """One layer's Q/K/V from a ``capture_qkv`` block, refusing to go on when nothing was recorded (a
    self-attention loss on nothing would read as a perfect match)."""
    qkv = qkv_by_layer.get(layer)
    if qkv is None or any(t.numel() == 0 for t in qkv):
        raise RuntimeError(
            f"no query/key/value was captured from the {side}'s encoder layer {layer}: "
            "the self-attention loss would be computed on nothing"
        )
    return qkv


class _SelfAttentionKD(Technique):
    """Shared loop: capture one teacher layer and the student's last layer, add the relation losses to
    the prediction-layer loss."""

    paper: ClassVar[str]

    def __init__(self, alpha: float, temperature: float, beta: float, **base: Any) -> None:
        super().__init__(**base)
        self.alpha, self.temperature, self.beta = alpha, temperature, beta
        self.teacher_layer = self.hparams.get("teacher_layer", -1) % structure.num_layers(self.teacher)
        for model in (self.student, self.teacher):  # unsupported architectures fail now, not mid-training
            with capture_qkv(model, [-1]):
                pass
        log.info(
            "%s teacher layer -> student layer: %d -> %d",
            self.paper,
            self.teacher_layer,
            structure.num_layers(self.student) - 1,
        )

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(teacher=True)  # queries, keys and values of the teacher: not cacheable

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        num_T, teacher_layer = models.teacher.num_hidden_layers, hparams.get("teacher_layer", -1)
        if not -num_T <= teacher_layer < num_T:
            raise ConfigError(
                "technique.teacher_layer", teacher_layer, f"a teacher layer index in -{num_T}..{num_T - 1}"
            )

    @classmethod
    def _check_common(cls, alpha: float, temperature: float, beta: float) -> None:
        check_kd_weights(alpha, temperature)
        if beta < 0:
            raise ConfigError("technique.beta", beta, "the weight of the self-attention loss must be >= 0")

    def relation_losses(self, qkv_S: QKV, qkv_T: QKV, attention_mask: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with capture_qkv(self.teacher, [self.teacher_layer]) as qkv_T:
            logits_T = self.teacher_outputs(batch).logits
        with capture_qkv(self.student, [-1]) as qkv_S:
            logits_S = self(batch)
        relations = self.relation_losses(
            captured(qkv_S, -1, "student"),
            captured(qkv_T, self.teacher_layer, "teacher"),
            batch["attention_mask"],
        )
        ce = F.cross_entropy(logits_S, batch["labels"])
        kd = kd_kl(logits_S, logits_T, self.temperature)
        loss = self.alpha * ce + (1.0 - self.alpha) * kd + self.beta * sum(relations.values())
        return {"loss": loss, "loss/ce": ce, "loss/kd": kd, **relations}


class MiniLM(_SelfAttentionKD):
    """The teacher's last layer teaches the student's last layer (``teacher_layer`` is not a choice here)."""

    paper = "MiniLM"

    def __init__(self, alpha: float = 0.5, temperature: float = 4.0, beta: float = 1.0, **base: Any) -> None:
        self.validate_hparams(alpha=alpha, temperature=temperature, beta=beta)
        super().__init__(alpha, temperature, beta, **base)

    @classmethod
    def validate_hparams(cls, alpha: float, temperature: float, beta: float, **_: Any) -> None:
        cls._check_common(alpha, temperature, beta)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        super().check_models(models, **hparams)
        models.require_same(
            "num_attention_heads",
            "MiniLM matches attention maps head by head; technique=minilm_v2 allows other head counts",
        )
        for config in (models.student, models.teacher):
            if config.model_type == "mpnet":
                raise ConfigError(
                    "technique",
                    "minilm",
                    "a model without a relative position bias in its attention scores (MPNet has one, which "
                    "captured Q/K do not carry); technique=minilm_v2 does not use the scores",
                )

    def relation_losses(self, qkv_S: QKV, qkv_T: QKV, attention_mask: Tensor) -> dict[str, Tensor]:
        probs_S = attention_scores(qkv_S.query, qkv_S.key, attention_mask).softmax(-1)
        probs_T = attention_scores(qkv_T.query, qkv_T.key, attention_mask).softmax(-1)
        return {
            "loss/attn_kl": attention_kl(probs_S, probs_T, attention_mask),
            "loss/value_kl": value_relation_kl(qkv_S.value, qkv_T.value, attention_mask),
        }


class MiniLMv2(_SelfAttentionKD):
    paper = "MiniLMv2"

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 4.0,
        beta: float = 1.0,
        relation_heads: int = 24,
        teacher_layer: int = -1,
        **base: Any,
    ) -> None:
        self.validate_hparams(
            alpha=alpha,
            temperature=temperature,
            beta=beta,
            relation_heads=relation_heads,
            teacher_layer=teacher_layer,
        )
        super().__init__(alpha, temperature, beta, **base)
        self.relation_heads = relation_heads

    @classmethod
    def validate_hparams(
        cls,
        alpha: float,
        temperature: float,
        beta: float,
        relation_heads: int,
        teacher_layer: int,
        **_: Any,
    ) -> None:
        cls._check_common(alpha, temperature, beta)
        if not _is_int(relation_heads) or relation_heads <= 0:
            raise ConfigError(
                "technique.relation_heads", relation_heads, "an integer > 0 dividing both widths"
            )
        if not _is_int(teacher_layer):
            raise ConfigError(
                "technique.teacher_layer",
                teacher_layer,
                "an integer layer index (negative counts from the end)",
            )

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        super().check_models(models, **hparams)
        relation_heads = hparams["relation_heads"]
        widths = {"student": models.student.hidden_size, "teacher": models.teacher.hidden_size}
        if any(width % relation_heads for width in widths.values()):
            raise ConfigError(
                "technique.relation_heads",
                relation_heads,
                f"a divisor of both widths (student {widths['student']}, teacher {widths['teacher']})",
            )

    def relation_losses(self, qkv_S: QKV, qkv_T: QKV, attention_mask: Tensor) -> dict[str, Tensor]:
        return qkv_relation_losses(qkv_S, qkv_T, self.relation_heads, attention_mask)


def qkv_relation_losses(qkv_S: QKV, qkv_T: QKV, relation_heads: int, attention_mask: Tensor) -> dict[str, Tensor]:
    """MiniLMv2's Q-Q, K-K and V-V relation KLs (``loss/qq``, ``loss/kk``, ``loss/vv``) over ``relation_heads``."""
    return {
        f"loss/{name}": relation_kl(x_S, x_T, relation_heads, attention_mask)
        for name, x_S, x_T in zip(("qq", "kk", "vv"), qkv_S, qkv_T)
    }
