"""TinyBERT (Jiao et al. 2020) transformer-layer losses: embeddings, hidden states, attention scores.

The prediction-layer loss, ``CE(z_T/t, z_S/t) = −Σ softmax(z_T/t) · log_softmax(z_S/t)`` (eq. 10),
is ``slimnlp.losses.kd.soft_cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def embedding_mse(emb_S: Tensor, emb_T: Tensor, proj: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding", eq. (9).

    ``L_embd = MSE(E_S · W_e, E_T)`` on the embedding-layer outputs ``(batch, seq, hidden)``. ``proj`` is
    the learnable ``W_e`` (an ``nn.Linear(d_S, d_T)`` trained with the student); leave it out when the
    widths match. As in the reference ``task_distill.py``, the mean runs over every position, padding
    included (``MSELoss()`` on the full tensors).
    """
    return _projected_mse(emb_S, emb_T, proj)


def hidden_mse(h_S: Tensor, h_T: Tensor, proj: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Jiao et al. 2020, TinyBERT, eq. (8).

    ``L_hidn = MSE(H_S · W_h, H_T)`` for one matched layer pair, hidden states ``(batch, seq, hidden)``.
    ``proj`` is the learnable ``W_h`` applied to the student (the reference's ``fit_dense``, shared by all
    layers and the embeddings there). Padding is included in the mean, as in the reference.
    """
    return _projected_mse(h_S, h_T, proj)


def attention_mse(scores_S: Tensor, scores_T: Tensor, attention_mask: Tensor) -> Tensor:
    """Jiao et al. 2020, TinyBERT, eq. (7).

    ``L_attn = 1/h · Σ_i MSE(A_S,i, A_T,i)`` on the *pre-softmax* scores ``A = QKᵀ/√d_k (+ mask)`` of each
    head, ``(batch, heads, seq, seq)``; student and teacher need the same number of heads. Unnormalized
    scores converge faster than probabilities (paper §3.1).

    Masked positions follow the reference ``task_distill.py``: scores at padded *keys* are set to 0 in
    both tensors before ``MSELoss()`` (it does ``torch.where(att <= -1e2, 0, att)``, which catches the
    additive −10000 mask). Here the key mask decides instead of the value threshold, so the result does not
    depend on the mask constant (−10000, ``finfo.min``, −inf) and a genuine score below −100 is not
    silently dropped; on scores carrying the additive mask both give the same number. Padded *query* rows
    stay in, and the mean divides by all ``batch·heads·seq·seq`` entries, as in the reference.
    """
    if scores_S.dim() != 4 or scores_S.shape != scores_T.shape:
        raise ValueError(
            "attention scores must both be (batch, heads, seq, seq) with the same heads, got student "
            f"{tuple(scores_S.shape)} and teacher {tuple(scores_T.shape)}"
        )
    if attention_mask.shape != (scores_S.shape[0], scores_S.shape[-1]):
        raise ValueError(
            f"attention_mask must be (batch, seq) = {(scores_S.shape[0], scores_S.shape[-1])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    key_valid = attention_mask.bool()[:, None, None, :]
    zero = scores_S.new_zeros(())
    return F.mse_loss(torch.where(key_valid, scores_S, zero), torch.where(key_valid, scores_T.detach(), zero))


def _projected_mse(x_S: Tensor, x_T: Tensor, proj: Callable[[Tensor], Tensor] | None) -> Tensor:
    if proj is not None:
        x_S = proj(x_S)
    if x_S.shape != x_T.shape:
        raise ValueError(
            f"student {tuple(x_S.shape)} and teacher {tuple(x_T.shape)} differ"
            + ("" if proj is not None else "; pass proj=nn.Linear(d_S, d_T) when the hidden sizes differ")
        )
    return F.mse_loss(x_S, x_T.detach())
