"""PABEE (Zhou et al. 2020, "BERT Loses Patience: Fast and Robust Inference with Early Exit", NeurIPS; code:
github.com/JetRunner/PABEE) and the post-training companion that changes its patience.

``technique=pabee`` gives the student an internal classifier per encoder layer (the shared pooler, dropout and a
Linear per layer; the last is the student's own classifier) and fine-tunes all of them jointly on the weighted
average of the layers' cross-entropies, layer ``j`` weighted by ``j`` (the authors' ``run_glue.py`` training).
Validation already runs with early exit at the configured ``patience``, so the checkpoint kept is the best
early-exit model; the exported student exits early in its own forward (``slimnlp.modules.early_exit``), which is
what the runner tests and times. Evaluation also logs ``<split>/avg_exit_layer``: the mean number of layers an
example ran.

``technique=early_exit`` sets another ``patience`` on a saved PABEE student (``student=path``) without training,
as the authors' ``patience_infer_*.sh`` evaluates one trained model at several patience values: each run gives
that patience's accuracy, average exit layer and measured latency.

See ``slimnlp.modules.early_exit`` for the exit rule and the deviations from the reference code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from slimnlp.checks import choice, optional, require
from slimnlp.errors import ConfigError
from slimnlp.modules.early_exit import (
    EXIT_POOLINGS,
    add_internal_classifiers,
    check_early_exit_model,
    exit_encoder,
    internal_logits,
    patience_weighted_loss,
)
from slimnlp.techniques.base import ModelConfigs, Prediction, Requirements, Technique


def check_patience(patience: Any) -> None:
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        raise ConfigError("technique.patience", patience, "a positive number of consecutive agreeing layers")


def check_patience_fits(models: ModelConfigs, patience: int) -> None:
    check_early_exit_model(models.student)
    depth = models.student.num_hidden_layers
    if patience > depth:
        raise ConfigError("technique.patience", patience,
                          f"at most the student's {depth} layers ({depth - 1} or more never exits early)")
    if models.student.num_labels < 2:
        raise ConfigError("student.num_labels", models.student.num_labels, "2 or more: early exit classifies")


class _ExitReporting(Technique):
    """Evaluation of an early-exit student: its logits and the layer each example exited at."""

    def predict(self, batch: Mapping[str, Tensor]) -> Prediction:
        logits = self(batch)
        encoder = exit_encoder(self.student)
        return Prediction(logits, encoder.exit_layers if encoder is not None else None)

    def compression_metrics(self) -> dict[str, float]:
        encoder = exit_encoder(self.student)
        return {} if encoder is None else {"compress/patience": float(encoder.patience)}


class PABEE(_ExitReporting):
    """Joint fine-tuning of one internal classifier per layer; the export exits early with ``patience``.
    ``exit_pooling`` is what the shared pooler reads: ``cls`` as in the paper, or ``mean`` (the masked mean of the
    tokens) for an encoder trained with mean pooling, whose lower layers' ``[CLS]`` is nearly constant."""

    def __init__(self, patience: int = 2, exit_pooling: str = "cls", **base: Any) -> None:
        super().__init__(**base)
        self.patience = patience
        self.exit_pooling = exit_pooling

    @classmethod
    def validate_hparams(cls, patience: int, exit_pooling: str = "cls", **_: Any) -> None:
        check_patience(patience)
        require("technique.exit_pooling", exit_pooling, choice(*EXIT_POOLINGS),
                "what the internal classifiers' pooler reads")

    @classmethod
    def requirements(cls, **_: Any) -> Requirements:
        return Requirements(hidden_states=True)  # every layer's output feeds its internal classifier

    @classmethod
    def check_models(cls, models: ModelConfigs, patience: int = 2, **_: Any) -> None:
        check_patience_fits(models, patience)

    def prepare_student(self) -> None:
        add_internal_classifiers(self.student, self.patience, self.exit_pooling)

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        layer_logits = internal_logits(self.student, self.student_outputs(batch).hidden_states)
        labels = batch["labels"]
        losses = {f"train/ce_layer{j}": F.cross_entropy(logits, labels).detach()
                  for j, logits in enumerate(layer_logits, start=1)}
        return {"loss": patience_weighted_loss(layer_logits, labels), **losses}

    def export_student(self) -> PreTrainedModel:
        self.prepare()  # the student with its internal classifiers, also when no training step ran
        return self.student


class EarlyExit(_ExitReporting):
    """Post-training: a saved PABEE student (``student=path``) with another ``patience``; nothing is trained.
    Its pooling is the saved one (its classifiers were trained on it); ``exit_pooling``, when given, must match it,
    so a run's config says which PABEE model it evaluated."""

    def __init__(self, patience: int | None = None, exit_pooling: str | None = None, **base: Any) -> None:
        super().__init__(**base)
        self.patience = patience
        self.exit_pooling = exit_pooling

    @classmethod
    def validate_hparams(cls, patience: int | None, exit_pooling: str | None = None, **_: Any) -> None:
        check_patience(patience)
        require("technique.exit_pooling", exit_pooling, optional(choice(*EXIT_POOLINGS)),
                "null: the saved student's")

    @classmethod
    def requirements(cls, **_: Any) -> Requirements:
        return Requirements(trains=False)

    @classmethod
    def check_models(cls, models: ModelConfigs, patience: int | None = None, **_: Any) -> None:
        if patience is not None:
            check_patience_fits(models, patience)

    def prepare_student(self) -> None:
        encoder = exit_encoder(self.student)
        if encoder is None:
            raise ConfigError("student.path", self.student.config.name_or_path or type(self.student).__name__,
                              "a student saved by technique=pabee (this one has no internal classifiers)")
        if self.exit_pooling is not None and self.exit_pooling != encoder.pooling:
            raise ConfigError("technique.exit_pooling", self.exit_pooling,
                              f"the saved student's pooling {encoder.pooling!r} (its classifiers were trained on it) or null")
        encoder.patience = self.patience

    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> Mapping[str, float]:
        return self.compression_metrics()
