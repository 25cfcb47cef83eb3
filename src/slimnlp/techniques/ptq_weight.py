"""Post-training round-to-nearest weight quantization, no data: the baseline QAT is judged against at the same
bits. Each target Linear's weights are rounded to the nearest code with the symmetric scale of
``slimnlp.modules.quantization`` — what ``qat`` exports, without the training — and saved the same way.

    python train.py technique=ptq_weight student=6L student.init_from=finetuned technique.bits=4

Q8BERT's claim (Zafrir et al. 2019) is that training through the quantizer keeps accuracy where post-training
quantization loses it; this technique and ``qat`` at the same ``bits``/``granularity`` are that comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from slimnlp.modules.quantization import QuantizedLinear
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.qat import QuantizationAwareTraining
from slimnlp.techniques.quantization import DataFreeQuantization, check_group_size


class RoundToNearest(DataFreeQuantization):
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
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        check_group_size(models, hparams.get("granularity", "per_channel"), hparams.get("group_size", 128))

    def replacement(self, linear: nn.Linear) -> QuantizedLinear:
        kernel = QuantizationAwareTraining.kernel_for(self.kernel, self.bits, self.granularity)
        return QuantizedLinear.from_linear(
            linear, bits=self.bits, granularity=self.granularity,
            group_size=self.group_size if self.granularity == "group" else None, kernel=kernel,
            activation_bits=self.activation_bits if kernel == "dequant" else None)
