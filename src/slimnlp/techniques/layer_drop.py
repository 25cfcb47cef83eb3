"""LayerDrop (Fan, Grave & Joulin 2020, "Reducing Transformer Depth on Demand with Structured Dropout") and
the inference-time layer pruning it makes cheap.

``technique=layer_drop`` fine-tunes the student with structured dropout of whole layers: on every training
forward pass each encoder layer is skipped independently with probability ``rate`` (fairseq's
``LayerDropModuleList``: a fresh uniform draw per layer per pass; the authors recommend 0.2). A network
trained so is robust to losing layers, so it can be cut to a smaller depth afterwards *without retraining*:
``depth`` (or an explicit ``prune_layers`` list) is removed from the exported student, and validation already
runs at that depth, so the checkpoint kept is the best *pruned* model. ``technique=drop_layers`` is the same
cut applied to any trained model (``student=path``), e.g. one LayerDrop-trained student evaluated at
several depths, or a normally fine-tuned one as the baseline the paper compares against.

The layers removed for a target depth follow the paper's "Every Other" strategy: for a pruning rate
``p = 1 − depth/N`` it drops the layers at depth ``d ≡ 0 (mod ⌊1/p⌋)`` (1-indexed), i.e. fairseq's
``--encoder-layers-to-keep 0,2,4,…`` for half the layers. That rule only gives exactly ``depth`` layers when
``N − depth`` divides ``N``; ``every_other`` generalises it by spreading the ``N − depth`` dropped layers
evenly, top-aligned (``uniform_layer_map``), which is the paper's choice wherever the rule is defined.

Deviation: the paper applies LayerDrop in pre-training (and fine-tuning) of RoBERTa; here it is applied while
fine-tuning a pretrained student on the task (optionally with the teacher's soft loss, ``distill``), which is
the setting slimnlp's students are in. The pre-training form belongs with general distillation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from slimnlp.errors import ConfigError
from slimnlp.models import structure, surgery
from slimnlp.models.students import uniform_layer_map
from slimnlp.techniques.base import ModelConfigs, Requirements, Stage, Technique
from slimnlp.techniques.pruning import DistilledPruning


def every_other(num_layers: int, depth: int) -> list[int]:
    """Indices of the layers dropped to leave ``depth`` of ``num_layers`` (LayerDrop's "Every Other")."""
    if not 1 <= depth <= num_layers:
        raise ValueError(f"depth must lie in 1..{num_layers}, got {depth}")
    return uniform_layer_map(num_layers - depth, num_layers) if depth < num_layers else []


def _is_index_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    )


def check_layer_choice(depth: int | None, prune_layers: Sequence[int] | None) -> None:
    """The two ways of naming the cut, checked without the model: at most one, each well-formed."""
    if depth is not None and prune_layers is not None:
        raise ConfigError("technique.prune_layers", list(prune_layers), "null when technique.depth is set (one or the other)")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        raise ConfigError("technique.depth", depth, "a positive number of layers to keep, or null")
    if prune_layers is not None and (not _is_index_list(prune_layers) or len(set(prune_layers)) != len(prune_layers)):
        raise ConfigError("technique.prune_layers", prune_layers, "a list of distinct layer indices, or null")


def check_layer_choice_fits(num_layers: int, depth: int | None, prune_layers: Sequence[int] | None) -> None:
    """The cut against the student's depth: every index a layer, at least one layer left."""
    if depth is not None and depth > num_layers:
        raise ConfigError("technique.depth", depth, f"at most the student's {num_layers} layers")
    if prune_layers is not None:
        if not set(prune_layers) <= set(range(num_layers)):
            raise ConfigError("technique.prune_layers", list(prune_layers), f"indices in 0..{num_layers - 1}")
        if len(prune_layers) >= num_layers:
            raise ConfigError("technique.prune_layers", list(prune_layers), f"fewer than all {num_layers} layers")


def layers_to_keep(num_layers: int, depth: int | None, prune_layers: Sequence[int] | None) -> list[int]:
    """The layers the cut leaves (all when neither is given), ascending."""
    if prune_layers is not None:
        pruned = set(prune_layers)
    else:
        pruned = set(every_other(num_layers, depth)) if depth is not None else set()
    return [i for i in range(num_layers) if i not in pruned]


def depth_metrics(model: PreTrainedModel) -> dict[str, float]:
    return {"compress/layers_kept": float(structure.num_layers(model))}


class LayerDrop(DistilledPruning):
    """Fine-tuning with each layer skipped with probability ``rate`` per forward pass, then (optionally) the
    student cut to ``depth`` layers (or without ``prune_layers``) at export."""

    def __init__(
        self, rate: float = 0.2, depth: int | None = None, prune_layers: Sequence[int] | None = None, **base: Any
    ) -> None:
        super().__init__(**base)
        self.rate = rate
        self.kept_layers = layers_to_keep(structure.num_layers(self.student), depth, prune_layers)
        self.exported = False

    @classmethod
    def validate_hparams(cls, rate: float, depth: int | None, prune_layers: Sequence[int] | None, **rest: Any) -> None:
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
            raise ConfigError("technique.rate", rate, "a layer-drop probability in [0, 1)")
        check_layer_choice(depth, prune_layers)
        super().validate_hparams(**rest)

    @classmethod
    def requirements(cls, rate: float = 0.2, **hparams: Any) -> Requirements:
        # A skipped layer's parameters get no gradient that step: DDP has to look for them.
        return replace(super().requirements(**hparams), find_unused_parameters=rate > 0)

    @classmethod
    def check_models(
        cls, models: ModelConfigs, depth: int | None = None, prune_layers: Sequence[int] | None = None, **_: Any
    ) -> None:
        check_layer_choice_fits(models.student.num_hidden_layers, depth, prune_layers)

    @classmethod
    def stages(cls, **hparams: Any) -> list[Stage]:
        # Validation runs at the exported depth, so the best validation checkpoint is the best cut model.
        return [Stage("train")]

    # ------------------------------------------------------------------ forward passes
    def layers_this_pass(self) -> nn.ModuleList | None:
        """The layers one forward pass runs: a fresh LayerDrop draw over all layers in training, the kept
        layers in evaluation, ``None`` (the student as it is) once the student was cut at export."""
        if self.exported:
            return None
        layers = structure.encoder_layers(self.student)
        if self.training:
            survive = torch.rand(len(layers)) >= self.rate  # fairseq keeps a layer when its draw exceeds p
            return nn.ModuleList(layer for layer, keep in zip(layers, survive.tolist()) if keep)
        if len(self.kept_layers) == len(layers):
            return None
        return nn.ModuleList(layers[i] for i in self.kept_layers)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        layers = self.layers_this_pass()
        if layers is None:
            return super().forward(batch)
        with structure.lent_layers(self.student, layers):
            return super().forward(batch)

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.task_loss(batch)

    # ------------------------------------------------------------------ export
    def export_student(self) -> PreTrainedModel:
        if not self.exported:
            surgery.keep_layers(self.student, self.kept_layers)
            self.exported = True
        return self.student

    def compression_metrics(self) -> dict[str, float]:
        return depth_metrics(self.student)


class DropLayers(Technique):
    """Post-training layer pruning: the student (typically a trained run's, ``student=path``) cut to ``depth``
    layers by Every Other, or without ``prune_layers``; nothing is trained."""

    def __init__(self, depth: int | None = None, prune_layers: Sequence[int] | None = None, **base: Any) -> None:
        super().__init__(**base)
        self.depth, self.prune_layers = depth, prune_layers

    @classmethod
    def validate_hparams(cls, depth: int | None, prune_layers: Sequence[int] | None, **_: Any) -> None:
        if depth is None and prune_layers is None:
            raise ConfigError("technique.depth", None, "the number of layers to keep (or set technique.prune_layers)")
        check_layer_choice(depth, prune_layers)

    @classmethod
    def requirements(cls, **_: Any) -> Requirements:
        return Requirements(trains=False)

    @classmethod
    def check_models(
        cls, models: ModelConfigs, depth: int | None = None, prune_layers: Sequence[int] | None = None, **_: Any
    ) -> None:
        check_layer_choice_fits(models.student.num_hidden_layers, depth, prune_layers)

    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> Mapping[str, float]:
        surgery.keep_layers(self.student, layers_to_keep(structure.num_layers(self.student), self.depth,
                                                         self.prune_layers))
        return self.compression_metrics()

    def compression_metrics(self) -> dict[str, float]:
        return depth_metrics(self.student)
