"""Capture what HF outputs do not expose: per-head queries, keys and values, and pre-softmax scores.

``output_attentions`` gives post-softmax probabilities (and only with eager attention: with sdpa,
transformers 5.x returns ``attentions=()``). TinyBERT needs the scores before softmax and MiniLM(v2)
needs Q/K/V, so forward hooks on the self-attention projections record them, whatever the attention
implementation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from slimnlp.errors import ConfigError

SUPPORTED = (
    "BERT-like encoders: attention.self.{query,key,value} (BERT, RoBERTa) or attention.attn.{q,k,v} (MPNet)"
)


class QKV(NamedTuple):
    """One layer's projections, each ``(batch, heads, seq, head_dim)``."""

    query: Tensor
    key: Tensor
    value: Tensor


@contextmanager
def capture_qkv(model: nn.Module, layers: list[int] | None = None) -> Iterator[dict[int, QKV]]:
    """Record each chosen layer's Q, K, V during the forward passes run inside the ``with`` block.

    ``layers`` are encoder layer indices (negative counts from the end; ``None`` means all). The yielded
    dict is filled by each forward, keyed by the indices as given; a later forward overwrites an earlier
    one. Tensors keep their autograd graph, so a student's Q/K/V carry gradient to its weights (run the
    teacher under ``torch.no_grad()``). The hooks are removed on exit, also when the block raises.
    """
    encoder_layers = _encoder_layers(model)
    chosen = list(range(len(encoder_layers))) if layers is None else list(layers)
    for index in chosen:
        if not -len(encoder_layers) <= index < len(encoder_layers):
            raise ValueError(f"layer {index} out of range for an encoder with {len(encoder_layers)} layers")
    captured: dict[int, QKV] = {}
    handles = []
    try:
        for index in chosen:
            attention, projections = _qkv_modules(encoder_layers[index])
            slots: dict[str, Tensor] = {}
            for name, module in zip(QKV._fields, projections):
                handles.append(
                    module.register_forward_hook(_recorder(index, name, attention, slots, captured))
                )
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def attention_scores(q: Tensor, k: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Pre-softmax attention ``QKᵀ/√d_head + M``, ``(batch, heads, seq, seq)``, as BERT computes it.

    ``M`` is 0 on real keys and ``finfo(dtype).min`` on padded ones (``attention_mask`` is the
    ``(batch, seq)`` 0/1 tokenizer mask), the additive mask transformers uses; padded *queries* are not
    masked, as in BERT. ``softmax`` of the result equals the eager ``attentions``. MPNet also adds a
    relative position bias to its scores, which this does not include.
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if attention_mask is None:
        return scores
    additive = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device)
    additive = additive.masked_fill(~attention_mask.bool(), torch.finfo(scores.dtype).min)
    return scores + additive[:, None, None, :]


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            "model", type(model).__name__, f"no encoder.layer list found; supported: {SUPPORTED}"
        )
    return layers


def _qkv_modules(layer: nn.Module) -> tuple[nn.Module, tuple[nn.Module, nn.Module, nn.Module]]:
    """The self-attention module (it knows the head size) and its query, key and value projections."""
    attention = getattr(layer, "attention", None)
    for holder, names in (("self", ("query", "key", "value")), ("attn", ("q", "k", "v"))):
        module = getattr(attention, holder, None)
        if module is not None and all(isinstance(getattr(module, n, None), nn.Module) for n in names):
            return module, tuple(getattr(module, n) for n in names)
    raise ConfigError("model", type(layer).__name__, f"unsupported encoder layer; supported: {SUPPORTED}")


def _recorder(
    index: int, name: str, attention: nn.Module, slots: dict[str, Tensor], captured: dict[int, QKV]
):
    head_dim = attention.attention_head_size

    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        batch, seq, _ = output.shape
        slots[name] = output.reshape(batch, seq, -1, head_dim).transpose(1, 2)
        if len(slots) == len(QKV._fields):
            captured[index] = QKV(**slots)
            slots.clear()

    return hook
