"""FLOPs per example, counted by running the model under ``torch.utils.flop_counter.FlopCounterMode``.

Counting the operations the model really executes (not a formula over its config) is what makes the number
follow pruned heads, sliced FFNs and factorized Linears automatically. The counter counts matrix
multiplications (2 FLOPs per multiply-add) and attention; element-wise work (softmax, GELU, LayerNorm) is not
counted, as in the papers' FLOPs tables.

The CPU ``sdpa`` kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) has no formula in torch, so a
BERT under the default attention would lose its ``4·n²·H`` attention FLOPs per layer; we register the same
formula torch uses for its CUDA flash/efficient kernels (``flop_counter.sdpa_flop``). Likewise torch's int8
``quantized::linear_dynamic`` and the ``aten._int_mm`` that torchao's int8 Linear runs (a quantized student's
Linears) count ``2·rows·in·out``: an integer multiply-add is counted as a float one is, so quantization leaves
the FLOPs unchanged and shows in latency and bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils import flop_counter

from slimnlp.batch import model_inputs

_aten = torch.ops.aten
_CPU_SDPA = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _CPU_SDPA is not None and _CPU_SDPA not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_INT8_LINEAR = torch.ops.quantized.linear_dynamic
if _INT8_LINEAR not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(_INT8_LINEAR)
    def _int8_linear_flop(input_shape, packed, reduce_range=False, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for size in input_shape[:-1]:
            rows *= size
        return 2 * rows * input_shape[-1] * out_shape[-1]


if _aten._int_mm not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(_aten._int_mm)
    def _int_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]


@torch.inference_mode()
def flops_per_example(model: nn.Module, batch: Mapping[str, Tensor]) -> float:
    """Forward-pass FLOPs of ``model`` on ``batch`` divided by the batch size: per example at the batch's
    (fixed, padded) sequence length."""
    model.eval()
    inputs = model_inputs(batch)
    with flop_counter.FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops() / inputs["input_ids"].shape[0]


def bert_layer_flops(tokens: int, hidden: int, ffn: int) -> int:
    """The analytic count of one BERT encoder layer on ``tokens`` tokens: the Q, K, V and output projections
    (``4H²`` multiply-adds per token), the FFN (``2HF``), and attention scores and their weighted sum
    (``2n²H``), at 2 FLOPs per multiply-add: ``2·n·(4H² + 2H·F) + 4·n²·H``."""
    return 2 * tokens * (4 * hidden**2 + 2 * hidden * ffn) + 4 * tokens**2 * hidden
