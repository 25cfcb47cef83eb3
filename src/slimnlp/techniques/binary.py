"""BinaryBERT (Bai et al. 2021, "BinaryBERT: Pushing the Limit of BERT Quantization", ACL): train a ternary
model, split every ternary weight into two binary ones (ternary weight splitting, TWS), fine-tune the binary
model; distillation from the full-precision teacher throughout.

    python train.py technique=binary student=6L student.init_from=finetuned

One run, the stages of ``BinaryBERT.stages()``, each with its own optimizer, LR schedule and epochs:

1. ``ternary``: TernaryBERT's training (TWN weights, 8-bit activations; ``slimnlp.techniques.ternary``); it hands
   on the *latent* full-precision weights, which is what the reference's ``tws_split`` reads.
2. ``binary``: TWS of each target Linear (``slimnlp.modules.binary``: the binary model starts with exactly the
   ternary model's function), then BWN training of both halves; the artifact stores two sign planes and two
   scales per Linear (2 bits per weight).

With ``kd=two_stage`` (the reference scripts' ``--kd_type two_stage``) each phase is two stages: the hidden-state
and attention-score MSE at ``intermediate_lr_scale`` (2.5) × the phase's LR, then the soft cross-entropy on the
logits at the phase's LR; ``kd=joint`` trains the three losses together (TernaryBERT's recipe) in one stage per
phase. ``split=false`` skips the ternary phase and binarizes the fine-tuned weights directly, one plane per
Linear: the paper's baseline that TWS is measured against (1 bit per weight).

Defaults are the reference's (``scripts/terarny_glue.sh``, ``scripts/tws_glue.sh``): two-stage KD, 2 epochs per
stage, ternary LR 1e-5, binary LR 5e-5, linear warm-up and decay per stage. Deviations: the reference's ternary
model is a half-width DynaBERT (so the binary one is "full-sized"); here the student is whatever
``student=`` gives (a half-width model halves the bytes; on a full-width one the binary artifact has the ternary
one's 2 bits per weight); the embeddings stay fp32 (the reference splits them row-wise); activations use
torchao's 8-bit per-token fake quantization, without the reference's learnable clipping values; each split
Linear keeps one bias (the reference halves it into two, which only doubles the bias's effective LR); BWN's
sign maps an exact zero to +1.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from slimnlp.errors import ConfigError
from slimnlp.modules.binary import BinaryLinear, SplitBinaryLinear
from slimnlp.modules.quantization import FakeQuantLinear
from slimnlp.techniques.base import OptimizerFactory, Requirements, Stage, TaskInfo
from slimnlp.techniques.quantization import quantized_embeddings, replace_all, target_linears
from slimnlp.techniques.ternary import TernaryBERT

PHASES = ("both", "binary")  # the user's choice; "ternary" is set by the stages
KD = ("two_stage", "joint", "intermediate", "prediction")  # intermediate/prediction: one stage of two_stage


class BinaryBERT(TernaryBERT):
    ternary_word_embeddings = False  # the tables stay float through both phases (module docstring's deviations)

    def __init__(self, student: PreTrainedModel, task: TaskInfo, teacher: PreTrainedModel | None = None,
                 optimizer: OptimizerFactory | None = None, lr_scheduler: dict | None = None,
                 phase: str = "both", kd: str = "two_stage", split: bool = True, ternary_epochs: int | None = 2,
                 binary_epochs: int | None = 2, ternary_lr: float | None = 1e-5, binary_lr: float | None = 5e-5,
                 intermediate_lr_scale: float = 2.5, activation_bits: int | None = 8,
                 targets: Sequence[str] = ("encoder",), temperature: float = 1.0) -> None:
        if phase == "both" or kd == "two_stage":
            raise ConfigError("technique.phase/kd", f"{phase}/{kd}", "one stage's phase (ternary, binary) and kd "
                              "(joint, intermediate, prediction) when built directly; the runner runs "
                              "BinaryBERT.stages()")
        super().__init__(student=student, task=task, teacher=teacher, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         activation_bits=activation_bits, targets=targets, temperature=temperature,
                         intermediate_weight=0.0 if kd == "prediction" else 1.0)
        self.phase, self.kd, self.split = phase, kd, split

    # ------------------------------------------------------------ config
    @classmethod
    def validate_hparams(cls, phase: str, kd: str, split: Any, ternary_epochs: Any, binary_epochs: Any,
                         ternary_lr: Any, binary_lr: Any, intermediate_lr_scale: Any, **rest: Any) -> None:
        if phase not in (*PHASES, "ternary"):  # a run's phase is checked by stages()
            raise ConfigError("technique.phase", phase, f"one of {list(PHASES)}")
        if kd not in KD:
            raise ConfigError("technique.kd", kd, f"one of {list(KD)}")
        if not isinstance(split, bool):
            raise ConfigError("technique.split", split, "true (TWS from a ternary model) or false (binarize directly)")
        for key, value in (("ternary_epochs", ternary_epochs), ("binary_epochs", binary_epochs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"technique.{key}", value, "null (trainer.max_epochs) or an integer >= 1")
        for key, value, allowed in (("ternary_lr", ternary_lr, "a number > 0 or null (optim.optimizer.lr)"),
                                    ("binary_lr", binary_lr, "a number > 0 or null (optim.optimizer.lr)"),
                                    ("intermediate_lr_scale", intermediate_lr_scale, "a number > 0")):
            if (value is None and key == "intermediate_lr_scale") or not _positive_or_none(value):
                raise ConfigError(f"technique.{key}", value, allowed)
        # BinaryBERT always distills with TernaryBERT's weights; the stages set intermediate_weight themselves.
        super().validate_hparams(**{"distill": True, "alpha": 0.0, "intermediate_weight": 1.0, **rest})

    @classmethod
    def requirements(cls, kd: str = "two_stage", **hparams: Any) -> Requirements:
        intermediate = Requirements(teacher=True, hidden_states=True, find_unused_parameters=True)
        prediction = Requirements(teacher=True, cacheable_teacher_logits=True)
        joint = Requirements(teacher=True, hidden_states=True)
        return Requirements.union({"two_stage": [intermediate, prediction], "joint": [joint],
                                   "intermediate": [intermediate], "prediction": [prediction]}[kd])

    @classmethod
    def stages(cls, phase: str = "both", kd: str = "two_stage", split: bool = True, ternary_epochs: int | None = 2,
               binary_epochs: int | None = 2, ternary_lr: float | None = 1e-5, binary_lr: float | None = 5e-5,
               intermediate_lr_scale: float = 2.5, **_: Any) -> list[Stage]:
        if phase not in PHASES:  # "ternary" is valid for one stage, never for a run
            raise ConfigError("technique.phase", phase, f"one of {list(PHASES)} (for a ternary model: technique=ternary)")
        phases = [("ternary", ternary_epochs, ternary_lr)] if phase == "both" and split else []
        phases.append(("binary", binary_epochs, binary_lr))
        parts = ("intermediate", "prediction") if kd == "two_stage" else (kd,)
        stages = []
        for name, epochs, lr in phases:
            for part in parts:
                scaled = lr * intermediate_lr_scale if lr is not None and part == "intermediate" else lr
                # The intermediate losses never train the classifier: validation accuracy cannot pick a checkpoint.
                stages.append(Stage(name if len(parts) == 1 else f"{name}_{part}", {"phase": name, "kd": part},
                                    epochs, select_best=part != "intermediate", lr=scaled))
        return stages

    # ------------------------------------------------------------ training
    def prepare_student(self) -> None:
        if self.phase == "ternary":
            super().prepare_student()
            return
        if any(isinstance(m, SplitBinaryLinear) for m in self.student.modules()):
            self.quantized = [p for p, m in self.student.named_modules() if isinstance(m, SplitBinaryLinear)]
            return  # handed on by this phase's previous stage
        linears = target_linears(self.student, self.targets)
        replace_all(self.student, {path: SplitBinaryLinear.from_linear(m, split=self.split,
                                                                       activation_bits=self.activation_bits)
                                   for path, m in linears})
        self.quantized = [p for p, _ in linears]

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses = super().training_loss(batch)  # joint: soft CE + hidden + attention; prediction: soft CE
        if self.kd == "intermediate":
            losses["loss"] = losses["loss/hidden"] + losses["loss/attn"]
        return losses

    # ------------------------------------------------------------ export
    @torch.no_grad()
    def export_student(self) -> nn.Module:
        """What the next stage starts from, or the artifact: the ternary phase hands on its latent fp weights
        (restored as plain Linears), the binary intermediate stage its latent split weights; the last stage
        exports the packed binary model."""
        model = copy.deepcopy(self.student).cpu()
        self.exported = None
        if self.phase == "ternary":
            return replace_all(model, {p: _plain_linear(model.get_submodule(p)) for p in self.quantized})
        if self.kd == "intermediate":
            return model
        tables = quantized_embeddings(model, self.targets)
        replace_all(model, {p: BinaryLinear.from_split(model.get_submodule(p)) for p in self.quantized} | tables)
        self.exported = model
        return model


def _plain_linear(layer: FakeQuantLinear) -> nn.Linear:
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    linear.weight, linear.bias = layer.weight, layer.bias
    return linear


def _positive_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool) and value > 0)
