"""Techniques that exist to drive the runner's extension points through ``train.py`` (``_target_`` points here;
``tests/`` and ``tests/integration/`` are on the path). Each does real work on a real model."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_surgery import factorize, prune_heads, share_layers
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.techniques.base import Requirements, Stage, Technique
from slimnlp.techniques.finetune import FineTune

SHAPES = ("heads", "factorized", "shared")


class ExportShape(FineTune):
    """Fine-tunes, then exports a student of a shape an HF config cannot describe."""

    def __init__(self, shape: str = "heads", **base: Any) -> None:
        super().__init__(**base)
        self.shape = shape

    @classmethod
    def validate_hparams(cls, shape: str, **_: Any) -> None:
        if shape not in SHAPES:
            raise ConfigError("technique.shape", shape, f"one of {', '.join(SHAPES)}")

    def export_student(self) -> Any:
        model = copy.deepcopy(self.student)
        if self.shape == "heads":
            prune_heads(model, 0, [0, 1])
        elif self.shape == "factorized":
            factorize(model, 0, rank=8)
        else:
            share_layers(model, 0, 1)
        return model


class OneShotMagnitudePruning(Technique):
    """Post-training: run the calibration batches, then zero the smallest-magnitude ``sparsity`` share of every
    encoder Linear weight (one shot). ``prepare_student`` reads ``sparsity``, which only exists once this
    constructor has run."""

    def __init__(self, sparsity: float = 0.5, **base: Any) -> None:
        super().__init__(**base)
        self.sparsity = sparsity
        self.prepared_at: float | None = None

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(trains=False)

    def prepare_student(self) -> None:
        self.prepared_at = self.sparsity

    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        seen, devices = 0, set()
        with torch.no_grad():
            for batch in calibration:
                self.student(**model_inputs(batch))
                seen += batch["input_ids"].shape[0]
                devices.add(batch["input_ids"].device.type)
            zeros = total = 0
            for layer in structure.encoder_layers(self.student):
                for module in layer.modules():
                    if isinstance(module, nn.Linear):
                        weight = module.weight
                        k = int(self.sparsity * weight.numel())
                        threshold = weight.abs().flatten().kthvalue(k).values
                        weight[weight.abs() <= threshold] = 0.0
                        zeros += int((weight == 0).sum())
                        total += weight.numel()
        return {
            "compress/calibration_examples": float(seen),
            "compress/on_module_device": float(devices == {self.device.type}),
            "compress/sparsity": zeros / total,
            "compress/prepared_sparsity": float(self.prepared_at),
        }


class TwoStageOwnGroups(FineTune):
    """Two stages, the second at its own constant LR; a learnable logit scale in its own optimizer group."""

    def __init__(self, scale_lr: float = 0.05, second_lr: float = 2e-4, **base: Any) -> None:
        super().__init__(**base)
        self.scale_lr = scale_lr
        self.logit_scale = nn.Parameter(torch.ones(()))

    @classmethod
    def stages(cls, second_lr: float = 2e-4, **_: Any) -> list[Stage]:
        return [Stage("first"), Stage("second", lr=second_lr, lr_scheduler={"name": "constant", "warmup_ratio": 0.0})]

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.logit_scale], "lr": self.scale_lr, "weight_decay": 0.0}]

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ce = F.cross_entropy(self(batch) * self.logit_scale, batch["labels"])
        return {"loss": ce, "loss/ce": ce}


class CollapseToOneLabel(FineTune):
    """Fine-tunes, then exports a student whose classifier predicts ``label`` for every input (zero weights, a
    one-hot bias): what a model that learned nothing looks like to the runner's diagnostics."""

    def __init__(self, label: int = 0, **base: Any) -> None:
        super().__init__(**base)
        self.label = label

    def export_student(self) -> Any:
        model = copy.deepcopy(self.student)
        head = model.classifier
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-10.0)
            head.bias[self.label] = 10.0
        return model
