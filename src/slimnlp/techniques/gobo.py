"""GOBO (Zadeh et al. 2020), post-training: each encoder Linear's weights become 3-bit indices into 8 centroids,
the few outside the matrix's Gaussian kept in fp32 (``slimnlp.modules.codebook``). No data, no training.

    python train.py technique=gobo student=6L student.init_from=finetuned

Deviation: the paper also quantizes the embedding tables; here only the chosen Linears are (embeddings stay
fp32, as for every quantization technique in slimnlp), so the whole-model saving is smaller than the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from slimnlp.errors import ConfigError
from slimnlp.modules.codebook import CodebookLinear
from slimnlp.techniques.quantization import DataFreeQuantization, check_targets


class GOBO(DataFreeQuantization):
    def __init__(self, bits: int = 3, log_prob_threshold: float = -4.0, targets: Sequence[str] = ("encoder",),
                 **base: Any) -> None:
        super().__init__(**base)
        type(self).validate_hparams(**self.hparams)
        self.bits, self.log_prob_threshold, self.targets = bits, log_prob_threshold, tuple(targets)

    @classmethod
    def validate_hparams(cls, bits: int, log_prob_threshold: float, targets: Sequence[str], **_: Any) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
            raise ConfigError("technique.bits", bits, "an integer from 1 to 8 (the paper: 3, eight centroids)")
        if not isinstance(log_prob_threshold, int | float):
            raise ConfigError("technique.log_prob_threshold", log_prob_threshold, "a number (the paper: -4)")
        check_targets(targets)
        if "embeddings" in targets:
            raise ConfigError("technique.targets", list(targets), "Linears only: a subset of encoder, pooler, classifier")

    def replacement(self, linear: nn.Linear) -> CodebookLinear:
        return CodebookLinear.from_linear(linear, self.bits, self.log_prob_threshold)

    def compression_metrics(self) -> dict[str, float]:
        layers = [m for m in self.student.modules() if isinstance(m, CodebookLinear)]
        weights = sum(m.num_weights for m in layers)
        stored = sum(m.stored_bytes() for m in layers)
        return {
            "compress/quantized_layers": float(len(layers)),
            "compress/weight_bits": float(self.bits),
            "compress/outlier_fraction": sum(m.outlier_positions.numel() for m in layers) / max(weights, 1),
            "compress/quantized_weight_bytes": float(stored),
            "compress/quantized_weight_fp32_bytes": float(4 * weights),
            "compress/quantized_weight_compression": 4 * weights / max(stored, 1),
        }
