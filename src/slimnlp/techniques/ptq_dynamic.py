"""Post-training dynamic INT8 quantization of the encoder's Linears: int8 per-channel weights, activations
quantized on the fly at every call, no training and no calibration.

    python train.py technique=ptq_dynamic student=6L student.init_from=finetuned technique.backend=torchao

Two backends quantize the weights and supply the kernel:

- ``torch_ao``: ``torch.ao.quantization.quantize_dynamic`` with ``per_channel_dynamic_qconfig`` (symmetric
  per-channel int8 weights); computed by torch's ``quantized::linear_dynamic`` (fbgemm) kernel, activations
  quantized per tensor (``reduce_range``, as torch.ao does);
- ``torchao``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (per-row int8 weights, per-token int8
  activations), computed through its ``Int8Tensor``.

Each quantized module is then turned into a ``QuantizedLinear`` holding the backend's own codes and scales (no
requantization), so the artifact is plain int8 safetensors and reloads through ``slimnlp.load_student`` with
the same kernel. The default backend is the one measured faster on this CPU (README, "Quantization"):
pytorch/ao #3157 reports torchao's config slower than ``quantize_dynamic`` for BERT on CPU, and it is here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimnlp.errors import ConfigError
from slimnlp.modules.quantization import QuantizedLinear
from slimnlp.techniques.quantization import DataFreeQuantization, check_targets

BACKENDS = ("torch_ao", "torchao")


def torch_ao_int8(linear: nn.Linear) -> QuantizedLinear:
    """``linear`` through ``torch.ao.quantization.quantize_dynamic`` (per-channel int8), as a QuantizedLinear."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    holder = quantize_dynamic(nn.Sequential(linear), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    qweight, bias = holder[0]._packed_params._weight_bias()
    if bool(qweight.q_per_channel_zero_points().ne(0).any()):
        raise RuntimeError("torch.ao gave non-zero weight zero points; slimnlp stores symmetric int8 only")
    return QuantizedLinear.from_codes(qweight.int_repr(), qweight.q_per_channel_scales().float(), bias, bits=8,
                                      granularity="per_channel", kernel="fbgemm")


def torchao_int8(linear: nn.Linear) -> QuantizedLinear:
    """``linear`` through torchao's ``Int8DynamicActivationInt8WeightConfig``, as a QuantizedLinear."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    holder = nn.Sequential(linear)
    quantize_(holder, Int8DynamicActivationInt8WeightConfig())
    weight = holder[0].weight
    return QuantizedLinear.from_codes(weight.qdata, weight.scale, holder[0].bias, bits=8,
                                      granularity="per_channel", kernel="torchao")


CONVERTERS = {"torch_ao": torch_ao_int8, "torchao": torchao_int8}


class DynamicQuantization(DataFreeQuantization):
    def __init__(self, backend: str = "torch_ao", targets: Sequence[str] = ("encoder",), **base: Any) -> None:
        super().__init__(**base)
        type(self).validate_hparams(**self.hparams)
        self.backend, self.targets = backend, tuple(targets)

    @classmethod
    def validate_hparams(cls, backend: str, targets: Sequence[str], **_: Any) -> None:
        if backend not in BACKENDS:
            raise ConfigError("technique.backend", backend, f"one of {list(BACKENDS)}")
        check_targets(targets)

    def replacement(self, linear: nn.Linear) -> QuantizedLinear:
        return CONVERTERS[self.backend](linear)
