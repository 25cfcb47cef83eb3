"""Parameter counts of a model as saved (FLOPs: ``flops``; latency: ``latency``; bytes: ``slimnlp.artifacts``).

- ``params``: every parameter tensor once — ``nn.Module.parameters()`` yields a shared (tied or
  cross-layer-shared) tensor once, which is how weight sharing saves memory and disk;
- ``params_nonembedding``: without the token/position/segment embedding tables, the part that costs compute
  (the survey's and Kaplan et al.'s "non-embedding parameters");
- ``nonzero_params``: entries that are not zero, what unstructured pruning removes.
"""

from __future__ import annotations

from torch import nn


def parameter_counts(model: nn.Module) -> dict[str, float]:
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    params = list(model.parameters())
    return {
        "params": float(sum(p.numel() for p in params)),
        "params_nonembedding": float(sum(p.numel() for p in params if id(p) not in embedding)),
        "nonzero_params": float(sum(int(p.count_nonzero()) for p in params)),
    }
