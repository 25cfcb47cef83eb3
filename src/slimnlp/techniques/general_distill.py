"""General (task-agnostic) distillation on unlabelled text: a student learns the *pretrained* teacher's internals
before any task, so that a student of its own shape (TinyBERT's 4 x 312, random init) has language to fine-tune.

Two objectives (``objective``):

- ``tinybert`` — Jiao et al. 2020 §3.3, the first of TinyBERT's two stages; reference
  ``huawei-noah/Pretrained-Language-Model`` ``TinyBERT/general_distill.py``: ``loss = att_loss + rep_loss``, the
  MSE of the pre-softmax attention scores of each student layer against its mapped teacher layer (padded keys
  zeroed) plus the MSE of the embeddings and every mapped layer's hidden states through one learnable projection
  ``W: d_S -> d_T`` (the student's ``fit_dense``), the uniform layer map. The same loss as the intermediate stage
  of ``technique=tinybert`` (``transformer_layer_losses``), here from the pretrained teacher on raw text.
- ``minilm_v2`` — Wang et al. 2021 (MiniLMv2): the KL of the Q-Q, K-K and V-V self-attention relations of one
  teacher layer (``teacher_layer``, the last for base-size teachers) and the student's last layer, over
  ``relation_heads`` re-split heads, so widths and head counts may differ (``qkv_relation_losses``).

No labels and no task head: the runner (``Requirements.task=False``) starts from the pretrained teacher without
fine-tuning it, reads ``data=text_corpus``, validates on the held-out slice (``val/loss`` and ``val/loss/<part>``,
minimised: the best checkpoint is the lowest) and saves the student's encoder as a plain HF checkpoint
(``<run>/student``) for the task stages: ``student=path student.path=<run>/student technique=tinybert`` is
TinyBERT's full two-stage recipe.

Reference recipe (``general_distill.py``): LR 5e-5 with linear warm-up over 10% of the steps and linear decay,
batch 32, 128 tokens, 3 epochs of a large corpus (English Wikipedia). The defaults follow it (``conf/technique/
general_distill.yaml``); the corpus here is whatever ``data=text_corpus`` gives, far smaller. Deviations: AdamW
instead of ``BertAdam`` (no bias correction, eps 1e-6), as everywhere in slimnlp; no masked-LM data pipeline
(the reference pregenerates MLM-masked documents but ``general_distill.py`` never reads the masked labels); the
layer map is slimnlp's ``uniform_layer_map`` (student layer ``m`` -> teacher layer ``ceil((m+1)·L_T/L_S) - 1``),
which equals the reference's ``i·k + k - 1`` when the depths divide (12 -> 4: 2, 5, 8, 11) but spreads 6 -> 4 over
teacher layers 1, 2, 4, 5 where the reference's ``int(6 / 4) = 1`` would take the bottom four; ``layer_map=`` sets
any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from slimnlp.checks import choice, integer, number, optional, require
from slimnlp.errors import ConfigError
from slimnlp.models.capture import capture_qkv
from slimnlp.techniques.base import ModelConfigs, Requirements, Stage, Technique
from slimnlp.techniques.minilm import MiniLMv2, captured, qkv_relation_losses
from slimnlp.techniques.tinybert import TinyBERT, layer_map_and_projection, transformer_layer_losses

OBJECTIVES = ("tinybert", "minilm_v2")
GENERAL_LR = 5e-5  # general_distill.py's --learning_rate default (linear warm-up over 10%, then linear decay)
GENERAL_SCHEDULE = {"name": "linear", "warmup_ratio": 0.1}


class GeneralDistillation(Technique):
    def __init__(
        self,
        objective: str = "tinybert",
        layer_map: list[int] | None = None,
        relation_heads: int = 24,
        teacher_layer: int = -1,
        lr: float | None = GENERAL_LR,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.objective, self.relation_heads = objective, relation_heads
        if objective == "tinybert":  # the projection W is trained and checkpointed with the student, never saved
            self.layer_map, self.proj = layer_map_and_projection(self.student, self.teacher, layer_map)
        else:
            self.teacher_layer = teacher_layer % self.teacher.config.num_hidden_layers

    @classmethod
    def validate_hparams(
        cls, objective: str, layer_map: list[int] | None, relation_heads: int, teacher_layer: int,
        lr: float | None = GENERAL_LR, **_: Any,
    ) -> None:
        require("technique.objective", objective, choice(*OBJECTIVES), "the general-distillation loss")
        require("technique.lr", lr, optional(number(0, lo_open=True)), "null: optim.optimizer.lr")
        if objective == "tinybert":
            TinyBERT.validate_hparams("intermediate", 1.0, 0.0, layer_map, None, None)
            return
        require("technique.relation_heads", relation_heads, integer(1), "MiniLMv2's re-split heads")
        require("technique.teacher_layer", teacher_layer, integer(), "negative counts from the end")
        if layer_map is not None:
            raise ConfigError("technique.layer_map", layer_map,
                              "null: objective=minilm_v2 distils teacher_layer into the student's last layer")

    @classmethod
    def stages(cls, lr: float | None = GENERAL_LR, **_: Any) -> list[Stage]:
        # One stage at the reference's LR and schedule; no task metric, so the checkpoint kept is the one with the
        # lowest held-out loss (the data option's primary_mode is min).
        return [Stage("general", lr=lr, lr_scheduler=GENERAL_SCHEDULE)]

    @classmethod
    def requirements(cls, objective: str = "tinybert", **_: Any) -> Requirements:
        # The pooler and the throwaway classifier get no gradient (DDP must look for unused parameters).
        return Requirements(teacher=True, hidden_states=objective == "tinybert", task=False,
                            find_unused_parameters=True)

    @classmethod
    def check_models(cls, models: ModelConfigs, objective: str = "tinybert", **hparams: Any) -> None:
        if objective == "tinybert":
            TinyBERT.check_models(models, stage="intermediate", layer_map=hparams.get("layer_map"))
        else:
            MiniLMv2.check_models(models, relation_heads=hparams.get("relation_heads", 24),
                                  teacher_layer=hparams.get("teacher_layer", -1))

    def distillation_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.objective == "tinybert":
            return transformer_layer_losses(self, batch, self.layer_map, self.proj)
        with capture_qkv(self.teacher, [self.teacher_layer]) as qkv_T:
            self.teacher_outputs(batch)
        with capture_qkv(self.student, [-1]) as qkv_S:
            self.student_outputs(batch)
        relations = qkv_relation_losses(captured(qkv_S, -1, "student"), captured(qkv_T, self.teacher_layer, "teacher"),
                                        self.relation_heads, batch["attention_mask"])
        return {"loss": sum(relations.values()), **relations}

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.distillation_losses(batch)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        """The held-out loss and its parts (``val/loss``, ``val/loss/<part>``): the only thing to track here."""
        losses = self.distillation_losses(batch)
        bs = batch["input_ids"].shape[0]
        self.log("val/loss", losses["loss"], batch_size=bs, prog_bar=True)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"val/{name}", value, batch_size=bs)
