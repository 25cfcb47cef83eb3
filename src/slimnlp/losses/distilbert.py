"""DistilBERT (Sanh et al. 2019): align the directions of student and teacher hidden states."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cosine_hidden_loss(h_S: Tensor, h_T: Tensor, attention_mask: Tensor) -> Tensor:
    """Sanh et al. 2019, "DistilBERT, a distilled version of BERT", §2 (cosine embedding loss).

    ``L_cos = 1/N Σ_t (1 − cos(h_S,t, h_T,t))`` over the N non-padding tokens of the batch, hidden states
    ``(batch, seq, hidden)`` of equal width. As in the reference ``distiller.py`` (HF
    ``examples/research_projects/distillation``): select the tokens with ``attention_mask``, then
    ``CosineEmbeddingLoss`` with target 1 and mean reduction, so every real token weighs the same.
    """
    if h_S.dim() != 3 or h_S.shape != h_T.shape:
        raise ValueError(
            "hidden states must both be (batch, seq, hidden) of the same width, got student "
            f"{tuple(h_S.shape)} and teacher {tuple(h_T.shape)}"
        )
    if attention_mask.shape != h_S.shape[:2]:
        raise ValueError(
            f"attention_mask must be (batch, seq) = {tuple(h_S.shape[:2])}, got {tuple(attention_mask.shape)}"
        )
    valid = attention_mask.bool()
    s, t = h_S[valid], h_T.detach()[valid]
    return F.cosine_embedding_loss(s, t, s.new_ones(s.shape[0]))
