"""MiniLM (Wang et al. 2020) and MiniLMv2 (Wang et al. 2021): self-attention distillation by KL.

All three losses share one reduction, the papers' ``1/(A·|x|) Σ_a Σ_t KL(T_a,t ‖ S_a,t)`` per example
(A heads, |x| tokens), then the batch mean. Padding is excluded on both axes: padded keys get no
probability mass and padded query rows are left out of the sum and of |x|, as in the Bloomberg
MiniLMv2 reproduction (``minilmv2/minilmv2.py`` crops each example to its length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_kl(attn_probs_S: Tensor, attn_probs_T: Tensor, attention_mask: Tensor) -> Tensor:
    """Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation ...", §3.1 (attention transfer).

    ``L_AT = 1/(A_h·|x|) Σ_a Σ_t KL(A_T,a,t ‖ A_S,a,t)`` between the last layers' attention
    distributions ``A = softmax(QKᵀ/√d_k)``, given as post-softmax probabilities ``(batch, heads, seq,
    seq)`` (HF ``attentions`` — eager attention only). MiniLM v1 needs equal head counts; the hidden
    sizes may differ. A student probability that underflowed to 0 on a valid key is clamped to the
    smallest normal float instead of producing an infinite loss.
    """
    if attn_probs_S.dim() != 4 or attn_probs_S.shape != attn_probs_T.shape:
        raise ValueError(
            "MiniLM attention transfer needs the same (batch, heads, seq, seq) for student and teacher, got "
            f"{tuple(attn_probs_S.shape)} and {tuple(attn_probs_T.shape)} (use relation_kl for other head counts)"
        )
    key_valid = _key_valid(attention_mask, attn_probs_S)
    tiny = torch.finfo(attn_probs_S.dtype).tiny
    log_S = attn_probs_S.masked_fill(~key_valid, 1.0).clamp_min(tiny).log()
    log_T = attn_probs_T.detach().masked_fill(~key_valid, 1.0).clamp_min(tiny).log()
    return _masked_kl(log_S, log_T, key_valid, attention_mask)


def value_relation_kl(values_S: Tensor, values_T: Tensor, attention_mask: Tensor) -> Tensor:
    """Wang et al. 2020, MiniLM, §3.1 (value-relation transfer).

    ``VR = softmax(V Vᵀ / √d_k)`` per attention head on the last layers' values ``(batch, heads, seq,
    d_k)`` (e.g. from ``slimnlp.models.capture.capture_qkv``), and
    ``L_VR = 1/(A_h·|x|) Σ_a Σ_t KL(VR_T,a,t ‖ VR_S,a,t)``. ``d_k`` may differ between student and
    teacher (each side scales by its own), the head count may not: MiniLM v1 raises ``ValueError``,
    MiniLMv2's ``relation_kl`` lifts that restriction.
    """
    _check_pair(values_S, values_T, "values")
    if values_S.shape[1] != values_T.shape[1]:
        raise ValueError(
            f"MiniLM value relations need equal head counts, got student {values_S.shape[1]} and teacher "
            f"{values_T.shape[1]} (MiniLMv2's relation_kl re-splits into relation heads instead)"
        )
    return relation_kl(values_S, values_T, values_S.shape[1], attention_mask)


def relation_kl(x_S: Tensor, x_T: Tensor, num_relation_heads: int, attention_mask: Tensor) -> Tensor:
    """Wang et al. 2021, "MiniLMv2: Multi-Head Self-Attention Relation Distillation ...", §3.

    For queries, keys or values ``x`` ``(batch, heads, seq, d_head)`` of one layer: concatenate the heads
    back to ``(batch, seq, heads·d_head)``, split that into ``A_r = num_relation_heads`` relation heads of
    width ``d_r``, and form ``R = softmax(x_r x_rᵀ / √d_r)``; then
    ``L = 1/(A_r·|x|) Σ_a Σ_t KL(R_T,a,t ‖ R_S,a,t)``. Because the relation heads are re-split,
    student and teacher may have different head counts and widths (``d_r`` is each side's own); both
    widths must be divisible by ``A_r``. Call it once per relation (Q-Q, K-K, V-V) and sum.
    """
    _check_pair(x_S, x_T, "relation inputs")
    rel_S = _relations(x_S, num_relation_heads, "student")
    rel_T = _relations(x_T.detach(), num_relation_heads, "teacher")
    key_valid = _key_valid(attention_mask, rel_S)
    fill = torch.finfo(rel_S.dtype).min
    log_S = F.log_softmax(rel_S.masked_fill(~key_valid, fill), dim=-1)
    log_T = F.log_softmax(rel_T.masked_fill(~key_valid, fill), dim=-1)
    return _masked_kl(log_S, log_T, key_valid, attention_mask)


def _check_pair(x_S: Tensor, x_T: Tensor, what: str) -> None:
    if x_S.dim() != 4 or x_T.dim() != 4 or x_S.shape[0] != x_T.shape[0] or x_S.shape[2] != x_T.shape[2]:
        raise ValueError(
            f"{what} must both be (batch, heads, seq, ·) with the same batch and seq, got student "
            f"{tuple(x_S.shape)} and teacher {tuple(x_T.shape)}"
        )


def _relations(x: Tensor, num_relation_heads: int, side: str) -> Tensor:
    batch, heads, seq, d_head = x.shape
    width = heads * d_head
    if num_relation_heads <= 0 or width % num_relation_heads:
        raise ValueError(
            f"{side} width {width} ({heads} heads × {d_head}) is not divisible by num_relation_heads="
            f"{num_relation_heads}"
        )
    d_r = width // num_relation_heads
    x_r = x.transpose(1, 2).reshape(batch, seq, num_relation_heads, d_r).transpose(1, 2)
    return x_r @ x_r.transpose(-1, -2) / math.sqrt(d_r)


def _key_valid(attention_mask: Tensor, like: Tensor) -> Tensor:
    if attention_mask.shape != (like.shape[0], like.shape[-1]):
        raise ValueError(
            f"attention_mask must be (batch, seq) = {(like.shape[0], like.shape[-1])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    return attention_mask.bool()[:, None, None, :]


def _masked_kl(log_S: Tensor, log_T: Tensor, key_valid: Tensor, attention_mask: Tensor) -> Tensor:
    """Row-wise ``KL(T ‖ S)`` over valid keys, averaged over heads and valid queries, then over the batch.

    Masked entries are zeroed with ``masked_fill`` before any arithmetic so neither ``0·(−inf)`` in the
    forward nor ``0/0`` in the backward can appear.
    """
    log_S = log_S.masked_fill(~key_valid, 0.0)
    log_T = log_T.masked_fill(~key_valid, 0.0)
    kl_rows = (log_T.exp() * (log_T - log_S)).masked_fill(~key_valid, 0.0).sum(-1)  # (batch, heads, seq)
    query_valid = attention_mask.to(kl_rows.dtype)[:, None, :]
    rows_per_example = kl_rows.shape[1] * query_valid.sum((1, 2))
    return ((kl_rows * query_valid).sum((1, 2)) / rows_per_example.clamp_min(1)).mean()
