"""Quantization-aware training: fake-quantized weights (and activations) with the straight-through estimator,
then a real integer artifact (Q8BERT, Zafrir et al. 2019; Jacob et al. 2018; group-wise ranges: Q-BERT, Shen
et al. 2020).

    python train.py technique=qat student=6L student.init_from=finetuned technique.bits=4 technique.granularity=group

Which fake quantization trains which configuration:

- ``per_channel`` and ``group`` weights: torchao's QAT (``QATConfig(..., step="prepare")`` with
  ``IntxFakeQuantizeConfig``, symmetric), its ``FakeQuantizedLinear`` in place of each target Linear;
- ``per_tensor`` weights (torchao's weight fake quantizer has no per-tensor mode): slimnlp's own
  ``FakeQuantLinear`` (``slimnlp.modules.quantization``), the same symmetric formula;
- activations (``activation_bits=8``): 8-bit asymmetric per-token fake quantization, torchao's in both cases.
  Q8BERT quantizes activations per tensor with EMA ranges instead (a deviation: per-token dynamic ranges need
  no calibration and are what torchao's QAT provides).

Conversion (``export_student``, not torchao's ``convert`` step, which only restores float Linears without a
base config): each Linear becomes a ``QuantizedLinear`` holding the codes it trained with (the scale formula is
torchao's, ties included, so the codes are exactly those of its fake quantizer). 8-bit per-tensor/per-channel
weights run on torch's int8 kernel (``kernel=fbgemm``: activations quantized dynamically per tensor at
inference, the one place inference departs from training); 4- and 2-bit and group-wise weights are stored
packed and dequantized on load (``kernel=dequant``, with the training's per-token activation quantization).
With ``embeddings`` in ``targets`` the embedding tables are made int8 at export (weight-only, not trained
through fake quantization).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimnlp.errors import ConfigError
from slimnlp.modules.quantization import BITS, GRANULARITIES, KERNELS, FakeQuantLinear, QuantizedLinear
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.quantization import (
    DistilledQuantization,
    check_group_size,
    check_targets,
    quantized_embeddings,
    replace_all,
    target_linears,
)

log = logging.getLogger(__name__)
ACTIVATION_BITS = (8, None)
TORCHAO_DTYPES = {8: torch.int8, 4: torch.int4, 2: torch.int2}


class QuantizationAwareTraining(DistilledQuantization):
    def __init__(self, bits: int = 8, activation_bits: int | None = 8, granularity: str = "per_channel",
                 group_size: int = 128, kernel: str = "auto", targets: Sequence[str] = ("encoder",),
                 **base: Any) -> None:
        super().__init__(**base)
        self.bits, self.activation_bits = bits, activation_bits
        self.granularity, self.group_size = granularity, group_size
        self.kernel, self.targets = kernel, tuple(targets)
        self.quantized: list[str] = []
        self.exported: nn.Module | None = None

    @classmethod
    def validate_hparams(cls, bits: Any, activation_bits: Any, granularity: str, kernel: str,
                         targets: Sequence[str], **rest: Any) -> None:
        if bits not in BITS:
            raise ConfigError("technique.bits", bits, f"one of {list(BITS)}")
        if activation_bits not in ACTIVATION_BITS:
            raise ConfigError("technique.activation_bits", activation_bits, "8 or null (weights only)")
        if granularity not in GRANULARITIES:
            raise ConfigError("technique.granularity", granularity, f"one of {list(GRANULARITIES)}")
        if kernel not in ("auto", *KERNELS):
            raise ConfigError("technique.kernel", kernel, f"one of {['auto', *KERNELS]}")
        if kernel == "fbgemm" and (bits != 8 or granularity == "group"):
            raise ConfigError("technique.kernel", kernel, "auto or dequant for 4- and 2-bit or group-wise weights "
                              "(the int8 kernel runs 8-bit per-tensor or per-channel weights)")
        if kernel == "torchao" and (bits != 8 or granularity != "per_channel"):
            raise ConfigError("technique.kernel", kernel, "auto, fbgemm or dequant (torchao's int8 kernel runs "
                              "8-bit per-channel weights)")
        check_targets(targets)
        super().validate_hparams(**rest)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        check_group_size(models, hparams.get("granularity", "per_channel"), hparams.get("group_size", 128))
        super().check_models(models, **hparams)

    # ------------------------------------------------------------ training
    def prepare_student(self) -> None:
        linears = target_linears(self.student, self.targets)
        if self.granularity == "per_tensor":
            settings = {"bits": self.bits, "granularity": "per_tensor", "activation_bits": self.activation_bits}
            replace_all(self.student, {p: FakeQuantLinear.from_linear(m, **settings) for p, m in linears})
            how = "slimnlp FakeQuantLinear (per-tensor)"
        else:
            self._prepare_torchao({p for p, _ in linears})
            how = "torchao QATConfig"
        self.quantized = [p for p, _ in linears]
        log.info("qat: %d Linears fake-quantized to %s-bit weights (%s), activations %s, by %s", len(linears),
                 self.bits, self.granularity, self.activation_bits or "fp32", how)

    def _prepare_torchao(self, paths: set[str]) -> None:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

        dtype = TORCHAO_DTYPES[self.bits]
        if self.granularity == "group":
            weight = IntxFakeQuantizeConfig(dtype, group_size=self.group_size, is_symmetric=True)
        else:
            weight = IntxFakeQuantizeConfig(dtype, "per_channel", is_symmetric=True)
        activation = (IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
                      if self.activation_bits else None)
        quantize_(self.student, QATConfig(activation_config=activation, weight_config=weight, step="prepare"),
                  filter_fn=lambda module, fqn: fqn in paths)

    # ------------------------------------------------------------ export
    @staticmethod
    def kernel_for(kernel: str, bits: int, granularity: str) -> str:
        """``kernel=auto``: torch's int8 kernel where it runs the weights, dequantize-on-load elsewhere."""
        if kernel != "auto":
            return kernel
        return "fbgemm" if bits == 8 and granularity != "group" else "dequant"

    def deployment_kernel(self) -> str:
        return self.kernel_for(self.kernel, self.bits, self.granularity)

    def integer_linear(self, linear: nn.Linear) -> QuantizedLinear:
        kernel = self.deployment_kernel()
        return QuantizedLinear.from_linear(
            linear, bits=self.bits, granularity=self.granularity,
            group_size=self.group_size if self.granularity == "group" else None, kernel=kernel,
            activation_bits=self.activation_bits if kernel == "dequant" else None)

    @torch.no_grad()
    def export_student(self) -> nn.Module:
        model = copy.deepcopy(self.student).cpu()
        tables = quantized_embeddings(model, self.targets)  # int8 rows after training; a ternary-trained table as 2-bit
        replace_all(model, {p: self.integer_linear(model.get_submodule(p)) for p in self.quantized} | tables)
        self.exported = model
        return model
