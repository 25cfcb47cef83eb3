"""Parameter counts of a model as saved (FLOPs: ``flops``; latency: ``latency``; bytes: ``slimnlp.artifacts``).

- ``params``: every parameter tensor once — ``nn.Module.parameters()`` yields a shared (tied or
  cross-layer-shared) tensor once, which is how weight sharing saves memory and disk;
- ``params_nonembedding``: without the token/position/segment embedding tables, the part that costs compute
  (the survey's and Kaplan et al.'s "non-embedding parameters");
- ``nonzero_params``: entries that are not zero, what unstructured pruning removes.

A quantized Linear (``QuantizedLinear``, ``QuantizedEmbedding``, GOBO's ``CodebookLinear``, BinaryBERT's
``BinaryLinear``) stores its weight as codes in buffers: its weights count as parameters all the same (quantization changes their width, measured in bytes, not their
number), and a weight that decodes to zero as a zero entry.
"""

from __future__ import annotations

import torch
from torch import nn

from slimnlp.modules.binary import BinaryLinear
from slimnlp.modules.codebook import CodebookLinear
from slimnlp.modules.factorized import FactorizedEmbedding
from slimnlp.modules.quantization import QuantizedEmbedding, QuantizedLinear


def parameter_counts(model: nn.Module) -> dict[str, float]:
    tables = nn.Embedding | FactorizedEmbedding  # ALBERT counts the factorized table's projection as embedding
    embedding = {id(p) for m in model.modules() if isinstance(m, tables) for p in m.parameters()}
    params = list(model.parameters())
    kinds = QuantizedLinear | CodebookLinear | QuantizedEmbedding | BinaryLinear
    quantized = [m for m in model.modules() if isinstance(m, kinds)]
    integer = sum(m.num_weights for m in quantized)
    integer_embedding = sum(m.num_weights for m in quantized if isinstance(m, QuantizedEmbedding))
    nonzero_codes = sum(int(torch.count_nonzero(m.dense_weight())) for m in quantized)
    return {
        "params": float(sum(p.numel() for p in params) + integer),
        "params_nonembedding": float(
            sum(p.numel() for p in params if id(p) not in embedding) + integer - integer_embedding),
        "nonzero_params": float(sum(int(p.count_nonzero()) for p in params) + nonzero_codes),
    }
