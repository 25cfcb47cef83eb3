"""Structured pruning made physical: whole attention heads and FFN units cut out of an encoder's Linears, so
the model is really smaller and faster (not a masked model of the same size and speed).

Removing head ``h`` of a layer drops rows ``h·d … (h+1)·d`` of the query, key and value projections and the
same columns of the attention output projection (``d`` the head width); removing FFN unit ``j`` drops row
``j`` of the FFN's first Linear and column ``j`` of its second. Both are exact: the sliced model computes what
the model with those heads' / units' outputs multiplied by zero computes (tests). Every layer keeps at least
one head, since a layer with none has no attention output to reshape. MPNet's heads cannot be removed (its
encoder computes one relative-position bias per head for all layers); its FFN units can.

The parts' names come from ``structure.layer_parts`` (BERT, RoBERTa, ELECTRA, MPNet, DeBERTa-v2, DistilBERT);
the sliced model saves and reloads through ``slimnlp.artifacts``, which records the new shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from slimnlp.models import structure

_QUERY_NAMES = ("query", "q", "query_proj", "q_lin")
_HEAD_COUNT_NAMES = ("num_attention_heads", "n_heads")


def sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output features ``rows`` and input features ``cols`` of ``linear``."""
    weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight, bias = weight[rows], None if bias is None else bias[rows]
    if cols is not None:
        weight = weight[:, cols]
    sliced = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        sliced.weight.copy_(weight)
        if bias is not None:
            sliced.bias.copy_(bias)
    return sliced


def replace_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def num_heads(model: PreTrainedModel, layer: int) -> int:
    """Heads layer ``layer`` has now (counted from its query projection, so true after pruning)."""
    block = structure.encoder_layers(model)[layer]
    return block.get_submodule(structure.layer_parts(model).qkv[0]).out_features // structure.head_size(model)


def ffn_width(model: PreTrainedModel, layer: int) -> int:
    block = structure.encoder_layers(model)[layer]
    return block.get_submodule(structure.layer_parts(model).ffn_in).out_features


def prune_heads(model: PreTrainedModel, layer: int, heads: Sequence[int]) -> None:
    """Remove ``heads`` (indices among the layer's current heads) from encoder layer ``layer``."""
    parts, size = structure.layer_parts(model), structure.head_size(model)
    count = num_heads(model, layer)
    drop = set(heads)
    if drop:
        structure.check_heads_removable(model.config, "model_type")
    if not drop <= set(range(count)):
        raise ValueError(f"layer {layer} has heads 0..{count - 1}; asked to remove {sorted(drop)}")
    kept = [h for h in range(count) if h not in drop]
    if not kept:
        raise ValueError(f"layer {layer}: cannot remove all {count} heads (keep at least one)")
    if not drop:
        return
    index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept])
    block = structure.encoder_layers(model)[layer]
    for path in parts.qkv:
        replace_module(block, path, sliced_linear(block.get_submodule(path), rows=index))
    replace_module(block, parts.attention_out, sliced_linear(block.get_submodule(parts.attention_out), cols=index))
    sync_head_counts(block)


def prune_ffn_units(model: PreTrainedModel, layer: int, units: Sequence[int]) -> None:
    """Remove FFN units ``units`` (indices among the layer's current units) from encoder layer ``layer``."""
    parts, width = structure.layer_parts(model), ffn_width(model, layer)
    drop = set(units)
    if not drop <= set(range(width)):
        raise ValueError(f"layer {layer} has FFN units 0..{width - 1}; asked to remove some outside that range")
    if not drop:
        return
    index = torch.tensor([u for u in range(width) if u not in drop], dtype=torch.long)
    block = structure.encoder_layers(model)[layer]
    replace_module(block, parts.ffn_in, sliced_linear(block.get_submodule(parts.ffn_in), rows=index))
    replace_module(block, parts.ffn_out, sliced_linear(block.get_submodule(parts.ffn_out), cols=index))


def sync_config(model: PreTrainedModel) -> None:
    """Where every layer has the same FFN width, make it the config's, so the saved folder is a plain HF
    checkpoint (``from_pretrained`` rebuilds the shape). Uneven widths and removed heads stay in the config's
    original shape and the artifact manifest records the sliced Linears (``slimnlp.load_student``)."""
    widths = {ffn_width(model, i) for i in range(structure.num_layers(model))}
    if len(widths) == 1:
        structure.set_intermediate_size(model, widths.pop())


def sync_head_counts(model: nn.Module) -> None:
    """Set attention modules' head counts from their (possibly sliced) query projection.

    BERT/RoBERTa/ELECTRA read ``num_attention_heads``/``all_head_size`` only in ``__init__`` (forward reshapes
    with ``-1`` heads), but MPNet's forward uses ``all_head_size`` and DeBERTa-v2's ``num_attention_heads``,
    so a pruned or rebuilt model must not keep the config's full counts next to sliced projections.
    """
    for module in model.modules():
        head = getattr(module, "attention_head_size", None)
        query = next(
            (getattr(module, n) for n in _QUERY_NAMES if isinstance(getattr(module, n, None), nn.Module)),
            None,
        )
        width = getattr(query, "out_features", None)
        if not isinstance(head, int) or not isinstance(width, int) or head <= 0:
            continue
        for name in _HEAD_COUNT_NAMES:
            if isinstance(getattr(module, name, None), int):
                setattr(module, name, width // head)
        if isinstance(getattr(module, "all_head_size", None), int):
            module.all_head_size = width


def keep_layers(model: PreTrainedModel, keep: Sequence[int]) -> None:
    """Keep encoder layers ``keep`` (ascending indices), removing the others; the config's depth follows, so
    the saved folder reloads with plain ``from_pretrained``."""
    layers = structure.encoder_layers(model)
    if list(keep) != sorted(set(keep)) or not set(keep) <= set(range(len(layers))):
        raise ValueError(f"layers to keep must be ascending distinct indices in 0..{len(layers) - 1}, got {keep}")
    structure.set_encoder_layers(model, [layers[i] for i in keep])
