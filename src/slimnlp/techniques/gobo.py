"""GOBO (Zadeh et al. 2020), post-training: each encoder Linear's weights become 3-bit indices into 8 centroids,
the few outside the matrix's Gaussian kept in fp32 (``slimnlp.modules.codebook``). No data, no training.

    python train.py technique=gobo student=6L student.init_from=finetuned

Deviation: the paper also quantizes the embedding tables; here only the chosen Linears are (embeddings stay
fp32, as for every quantization technique in slimnlp), so the whole-model saving is smaller than the paper's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.modules.codebook import CodebookLinear
from slimnlp.techniques.base import Requirements, Technique
from slimnlp.techniques.quantization import check_targets, replace_all, target_linears

log = logging.getLogger(__name__)


class GOBO(Technique):
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

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(trains=False)

    @torch.no_grad()
    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        """GOBO reads no data: ``calibration`` is not used."""
        linears = target_linears(self.student, self.targets)
        coded = {p: CodebookLinear.from_linear(m, self.bits, self.log_prob_threshold) for p, m in linears}
        replace_all(self.student.cpu(), coded)
        log.info("gobo: %d Linears to %d-bit codebooks, %.3f%% outliers", len(coded), self.bits,
                 100 * self.compression_metrics()["compress/outlier_fraction"])
        return {}

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
