"""Model surgery for tests: the shape changes that compression techniques make (heads pruned by slicing,
FFN units sliced, layers shared, a Linear factorized), written out plainly so tests can build such students
without the techniques."""

from __future__ import annotations

import torch
from torch import nn

from slimnlp.models import structure
from slimnlp.modules.factorized import FactorizedLinear


def sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None):
    """A new Linear keeping output features ``rows`` and input features ``cols`` of ``linear``."""
    weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight, bias = weight[rows], None if bias is None else bias[rows]
    if cols is not None:
        weight = weight[:, cols]
    sliced = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        sliced.weight.copy_(weight)
        if bias is not None:
            sliced.bias.copy_(bias)
    return sliced


def prune_heads(model, layer: int, heads: list[int], update_counts: bool = True) -> None:
    """Drop ``heads`` of encoder layer ``layer``: query/key/value output rows, attention-output input
    columns (the head-pruning technique's slicing, written out here)."""
    attention = structure.encoder_layers(model)[layer].attention
    self_attn, size = attention.self, attention.self.attention_head_size
    kept = [h for h in range(self_attn.query.out_features // size) if h not in heads]
    index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept])
    for name in ("query", "key", "value"):
        setattr(self_attn, name, sliced_linear(getattr(self_attn, name), rows=index))
    attention.output.dense = sliced_linear(attention.output.dense, cols=index)
    if update_counts:
        self_attn.num_attention_heads, self_attn.all_head_size = len(kept), len(kept) * size


def slice_ffn(model, layer: int, keep: int) -> None:
    block = structure.encoder_layers(model)[layer]
    index = torch.arange(0, 2 * keep, 2)  # every other unit: not just a prefix
    block.intermediate.dense = sliced_linear(block.intermediate.dense, rows=index)
    block.output.dense = sliced_linear(block.output.dense, cols=index)


def share_layers(model, source: int, target: int) -> None:
    """Make encoder layer ``target`` the same module object as layer ``source`` (cross-layer sharing)."""
    layers = structure.encoder_layers(model)
    layers[target] = layers[source]


def factorize(model, layer: int, rank: int) -> None:
    """Replace layer ``layer``'s FFN input projection by two thin Linears (truncated SVD at ``rank``)."""
    block = structure.encoder_layers(model)[layer]
    block.intermediate.dense = FactorizedLinear.from_linear(block.intermediate.dense, rank)
