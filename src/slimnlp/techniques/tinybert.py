"""TinyBERT task-specific distillation.

Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP),
reference code huawei-noah/Pretrained-Language-Model ``TinyBERT/task_distill.py``. Two stages:

1. ``intermediate`` (transformer-layer distillation, eq. 7–9, 11):
   ``L = MSE(E_S·W, E_T) + Σ_m MSE(H_S,m·W, H_T,g(m)) + Σ_m 1/h Σ_i MSE(A_S,m,i, A_T,g(m),i)``
   with embeddings ``E``, layer outputs ``H``, *pre-softmax* attention scores ``A = QKᵀ/√d`` and the
   uniform map ``g`` (``students.uniform_layer_map``; 12→4 gives student layer m → teacher layer 3m, and
   the embedding layer 0 → 0). ``W`` is a learnable ``nn.Linear(d_S, d_T)`` owned by this technique (trained
   and checkpointed, never exported; none when the widths match). As in the reference (``fit_dense``) one
   ``W`` serves the embeddings and every layer; the paper writes a separate ``W_e`` for eq. 9. The classifier
   gets no gradient, so validation accuracy means nothing in this stage (``select_best=False``).
2. ``prediction`` (eq. 10): ``L = α·CE(z_S, y) + (1−α)·CE_soft(z_T/t, z_S/t)``, ``α = 0`` as in the paper.
   ``CE_soft`` is reduced as ``task_distill.py``'s ``soft_cross_entropy`` reduces it: the mean over batch *and*
   classes, 1/C of the per-example cross-entropy that ``technique=kd`` sums (no τ² factor either).
   ``prediction_reduction=batchmean`` gives the per-example sum, the same as ``prediction_reduction=mean``
   with the soft loss weighted by C.

Each stage has its own optimizer, as ``task_distill.py`` runs them (one invocation per stage): the intermediate
stage at a **constant** LR (``schedule = 'none'`` unless ``--pred_distill``; ``--learning_rate`` default 5e-5),
the prediction stage with linear warm-up over 10% of its steps and linear decay (``warmup_linear``,
``--warmup_proportion 0.1``) at the README's ``--learning_rate 3e-5``. ``intermediate_lr`` and ``prediction_lr``
default to those values (null: the run's ``optim.optimizer.lr``). Deviation: the reference's ``BertAdam`` has no
Adam bias correction and ε = 1e-6; slimnlp uses the run's AdamW for every stage.

Scores come from Q/K hooks (``slimnlp.models.capture``), which work with sdpa too, so no eager attention is
needed. The paper's data augmentation (GloVe neighbours + a BERT MLM head) is not implemented: the offline
teachers ship neither.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from slimnlp.errors import ConfigError
from slimnlp.losses.kd import SOFT_CE_REDUCTIONS, soft_cross_entropy
from slimnlp.losses.tinybert import attention_mse, embedding_mse, hidden_mse
from slimnlp.models import structure
from slimnlp.models.capture import QKV, attention_scores, capture_qkv
from slimnlp.models.students import uniform_layer_map
from slimnlp.techniques.base import ModelConfigs, Requirements, Stage, Technique
from slimnlp.techniques.kd import check_kd_weights

log = logging.getLogger(__name__)

STAGES = ("both", "intermediate", "prediction")
# task_distill.py: --learning_rate default 5e-5 at schedule 'none' for the intermediate stage; the README's
# prediction-stage command passes --learning_rate 3e-5, and the schedule is warmup_linear, --warmup_proportion 0.1.
INTERMEDIATE_LR, PREDICTION_LR = 5e-5, 3e-5
INTERMEDIATE_SCHEDULE = {"name": "constant", "warmup_ratio": 0.0}
PREDICTION_SCHEDULE = {"name": "linear", "warmup_ratio": 0.1}


class TinyBERT(Technique):
    def __init__(
        self,
        stage: str = "both",
        temperature: float = 1.0,
        alpha: float = 0.0,
        layer_map: list[int] | None = None,
        intermediate_epochs: int | None = None,
        prediction_epochs: int | None = None,
        intermediate_lr: float | None = INTERMEDIATE_LR,
        prediction_lr: float | None = PREDICTION_LR,
        prediction_reduction: str = "mean",
        **base: Any,
    ) -> None:
        self.validate_hparams(
            stage,
            temperature,
            alpha,
            layer_map,
            intermediate_epochs,
            prediction_epochs,
            intermediate_lr,
            prediction_lr,
            prediction_reduction,
        )
        if stage == "both":
            raise ConfigError(
                "technique.stage",
                stage,
                "intermediate or prediction when built directly; stage=both is run "
                "by the runner as the two stages of TinyBERT.stages()",
            )
        super().__init__(**base)
        self.stage, self.temperature, self.alpha = stage, temperature, alpha
        self.prediction_reduction = prediction_reduction
        self.proj: nn.Linear | None = None
        self.layer_map: list[int] = []
        if stage == "intermediate":
            self._setup_intermediate(layer_map)

    # ------------------------------------------------------------------ config
    @classmethod
    def validate_hparams(
        cls,
        stage: str,
        temperature: float,
        alpha: float,
        layer_map: list[int] | None,
        intermediate_epochs: int | None,
        prediction_epochs: int | None,
        intermediate_lr: float | None = INTERMEDIATE_LR,
        prediction_lr: float | None = PREDICTION_LR,
        prediction_reduction: str = "mean",
        **_: Any,
    ) -> None:
        if stage not in STAGES:
            raise ConfigError("technique.stage", stage, f"allowed: {', '.join(STAGES)}")
        check_kd_weights(alpha, temperature)
        if layer_map is not None and not (
            isinstance(layer_map, Sequence)
            and not isinstance(layer_map, str)
            and layer_map
            and all(_is_index(i) for i in layer_map)
        ):
            raise ConfigError(
                "technique.layer_map",
                layer_map,
                "null (uniform map) or a teacher layer index >= 0 per student layer",
            )
        for key, value in (
            ("intermediate_epochs", intermediate_epochs),
            ("prediction_epochs", prediction_epochs),
        ):
            if value is not None and not (_is_index(value) and value >= 1):
                raise ConfigError(f"technique.{key}", value, "null (trainer.max_epochs) or an integer >= 1")
        for key, value in (("intermediate_lr", intermediate_lr), ("prediction_lr", prediction_lr)):
            if value is not None and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            ):
                raise ConfigError(
                    f"technique.{key}", value, "null (optim.optimizer.lr) or a learning rate > 0"
                )
        if prediction_reduction not in SOFT_CE_REDUCTIONS:
            raise ConfigError(
                "technique.prediction_reduction",
                prediction_reduction,
                f"allowed: {', '.join(SOFT_CE_REDUCTIONS)} (mean: over batch and classes, the reference)",
            )

    @classmethod
    def requirements(cls, stage: str = "both", **_: Any) -> Requirements:
        # The prediction stage reads nothing but teacher logits (the runner may then serve them from its disk
        # cache); the intermediate stage needs hidden states and never trains the pooler and classifier.
        intermediate = Requirements(teacher=True, hidden_states=True, find_unused_parameters=True)
        prediction = Requirements(teacher=True, cacheable_teacher_logits=True)
        per_stage = {"intermediate": [intermediate], "prediction": [prediction]}
        return Requirements.union(per_stage.get(stage, [intermediate, prediction]))

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        if hparams.get("stage") == "prediction":
            return
        num_S, num_T = models.student.num_hidden_layers, models.teacher.num_hidden_layers
        layer_map = hparams.get("layer_map")
        if layer_map is not None and (len(layer_map) != num_S or max(layer_map) >= num_T):
            raise ConfigError(
                "technique.layer_map",
                list(layer_map),
                f"{num_S} teacher layer indices (one per student layer) in 0..{num_T - 1}",
            )
        models.require_same("num_attention_heads", "TinyBERT's attention loss compares the heads one to one")

    @classmethod
    def stages(
        cls,
        stage: str = "both",
        intermediate_epochs: int | None = None,
        prediction_epochs: int | None = None,
        intermediate_lr: float | None = INTERMEDIATE_LR,
        prediction_lr: float | None = PREDICTION_LR,
        **_: Any,
    ) -> list[Stage]:
        # The intermediate stage never trains the classifier: its validation accuracy cannot pick a checkpoint.
        intermediate = Stage(
            "intermediate",
            {"stage": "intermediate"},
            intermediate_epochs,
            select_best=False,
            lr=intermediate_lr,
            lr_scheduler=INTERMEDIATE_SCHEDULE,
        )
        prediction = Stage(
            "prediction",
            {"stage": "prediction"},
            prediction_epochs,
            lr=prediction_lr,
            lr_scheduler=PREDICTION_SCHEDULE,
        )
        return {
            "both": [intermediate, prediction],
            "intermediate": [intermediate],
            "prediction": [prediction],
        }[stage]

    def _setup_intermediate(self, layer_map: list[int] | None) -> None:
        self.layer_map, self.proj = layer_map_and_projection(self.student, self.teacher, layer_map)

    # ----------------------------------------------------------------- training
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.stage == "intermediate":
            return self._intermediate_loss(batch)
        logits_S = self(batch)
        pred = soft_cross_entropy(
            logits_S, self.teacher_logits(batch), self.temperature, self.prediction_reduction
        )
        ce = F.cross_entropy(logits_S, batch["labels"])
        return {"loss": self.alpha * ce + (1.0 - self.alpha) * pred, "loss/pred": pred, "loss/ce": ce}

    def _intermediate_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return transformer_layer_losses(self, batch, self.layer_map, self.proj)


def layer_map_and_projection(
    student: nn.Module, teacher: nn.Module | None, layer_map: list[int] | None
) -> tuple[list[int], nn.Linear | None]:
    """The teacher layer of each student layer (``layer_map``, else the uniform map) and the learnable
    ``W: d_S -> d_T`` (None when the widths match), logged."""
    assert teacher is not None
    num_S, num_T = structure.num_layers(student), structure.num_layers(teacher)
    layers = uniform_layer_map(num_S, num_T) if layer_map is None else list(layer_map)
    width_S, width_T = structure.hidden_size(student), structure.hidden_size(teacher)
    proj = nn.Linear(width_S, width_T) if width_S != width_T else None
    log.info(
        "tinybert: teacher layer -> student layer: embeddings->embeddings, %s; projection %s",
        ", ".join(f"{t}->{s}" for s, t in enumerate(layers)),
        f"{width_S}->{width_T}" if proj is not None else "none (equal widths)",
    )
    return layers, proj


def transformer_layer_losses(
    technique: Technique, batch: Mapping[str, Tensor], layer_map: Sequence[int], proj: nn.Linear | None
) -> dict[str, Tensor]:
    """TinyBERT's transformer-layer distillation of ``technique``'s student from its teacher (eq. 7-9, 11; the
    same in ``task_distill.py`` and ``general_distill.py``): embedding MSE, each mapped layer's hidden-state MSE
    through ``proj`` and its pre-softmax attention-score MSE (padded keys zeroed)."""
    teacher_layers = sorted(set(layer_map))
    with capture_qkv(technique.student) as qkv_S:
        out_S = technique.student_outputs(batch)
    with capture_qkv(technique.teacher, teacher_layers) as qkv_T:
        out_T = technique.teacher_outputs(batch)
    _require_captured(qkv_S, range(len(layer_map)), "student")
    _require_captured(qkv_T, teacher_layers, "teacher")
    h_S, h_T = out_S.hidden_states, out_T.hidden_states
    emb = embedding_mse(h_S[0], h_T[0], proj)
    hidden = attn = h_S[0].new_zeros(())
    for s, t in enumerate(layer_map):
        hidden = hidden + hidden_mse(h_S[s + 1], h_T[t + 1], proj)
        scores_S = attention_scores(qkv_S[s].query, qkv_S[s].key)
        scores_T = attention_scores(qkv_T[t].query, qkv_T[t].key)
        attn = attn + attention_mse(scores_S, scores_T, batch["attention_mask"])
    return {"loss": emb + hidden + attn, "loss/emb": emb, "loss/hidden": hidden, "loss/attn": attn}


def _require_captured(captured: dict[int, QKV], layers: Any, who: str) -> None:
    """The attention loss must never silently run on nothing (e.g. a model whose projections were not hooked)."""
    missing = [i for i in layers if i not in captured or captured[i].query.numel() == 0]
    if missing:
        raise RuntimeError(
            f"tinybert: no attention scores captured from the {who} for layers {missing}; "
            "the attention loss would be computed on nothing"
        )


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
