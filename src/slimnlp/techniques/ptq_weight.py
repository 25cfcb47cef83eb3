"""Post-training round-to-nearest weight quantization, no data: the baseline QAT is judged against at the same
bits. Each target Linear's weights are rounded to the nearest code with the symmetric scale of
``slimnlp.modules.quantization`` — what ``qat`` exports, without the training — and saved the same way.

    python train.py technique=ptq_weight student=6L student.init_from=finetuned technique.bits=4

Q8BERT's claim (Zafrir et al. 2019) is that training through the quantizer keeps accuracy where post-training
quantization loses it; this technique and ``qat`` at the same ``bits``/``granularity`` are that comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from slimnlp.modules.quantization import QuantizedLinear
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.qat import QuantizationAwareTraining
from slimnlp.techniques.quantization import (
    check_group_size,
    int8_embeddings,
    quantization_metrics,
    replace_all,
    target_linears,
)

log = logging.getLogger(__name__)


class RoundToNearest(Technique):
    def __init__(self, bits: int = 8, activation_bits: int | None = 8, granularity: str = "per_channel",
                 group_size: int = 128, kernel: str = "auto", targets: Sequence[str] = ("encoder",),
                 **base: Any) -> None:
        super().__init__(**base)
        type(self).validate_hparams(**self.hparams)
        self.bits, self.activation_bits, self.granularity = bits, activation_bits, granularity
        self.group_size, self.kernel, self.targets = group_size, kernel, tuple(targets)

    @classmethod
    def validate_hparams(cls, **hparams: Any) -> None:
        """The same settings, checked the same way, as ``qat``'s (without its distillation keys)."""
        QuantizationAwareTraining.validate_hparams(
            **{"distill": False, "alpha": 0.0, "temperature": 1.0, "intermediate_weight": 0.0, **hparams})

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(trains=False)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        check_group_size(models, hparams.get("granularity", "per_channel"), hparams.get("group_size", 128))

    @torch.no_grad()
    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        """Round-to-nearest reads no data: ``calibration`` is not used."""
        kernel = QuantizationAwareTraining.kernel_for(self.kernel, self.bits, self.granularity)
        group = self.group_size if self.granularity == "group" else None
        coded = {path: QuantizedLinear.from_linear(
            m, bits=self.bits, granularity=self.granularity, group_size=group, kernel=kernel,
            activation_bits=self.activation_bits if kernel == "dequant" else None)
            for path, m in target_linears(self.student, self.targets)}
        replace_all(self.student.cpu(), coded | int8_embeddings(self.student, self.targets))
        log.info("ptq_weight: %d Linears rounded to %d-bit %s codes (%s kernel)", len(coded), self.bits,
                 self.granularity, kernel)
        return {}

    def compression_metrics(self) -> dict[str, float]:
        return quantization_metrics(self.student)
