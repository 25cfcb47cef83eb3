"""The losses of MetaDistil's released code (JetRunner/MetaDistil, ``nlp/distillation_meta.py``), with its
reductions: both are ``F.mse_loss`` means over every element, so the released β, T and α carry over."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def softmax_mse(logits_S: Tensor, logits_T: Tensor, temperature: float) -> Tensor:
    """``T² · mean_{i,c} (softmax(z_T/T) − softmax(z_S/T))²``: the released soft loss.

    The mean runs over batch *and* classes (``F.mse_loss``'s default), not a sum over classes; the teacher's
    probabilities are not detached (MetaDistil's pilot update differentiates through them).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p_T = F.softmax(logits_T / temperature, dim=-1)
    p_S = F.softmax(logits_S / temperature, dim=-1)
    return F.mse_loss(p_S, p_T) * temperature**2


def normalized_cls_mse(cls_S: Sequence[Tensor], cls_T: Sequence[Tensor]) -> Tensor:
    """The released patient (PKD) term: ``mean_{j,i,h} (h_S,j/‖h_S,j‖₂ − h_T,j/‖h_T,j‖₂)²``.

    ``cls_S[j]`` and ``cls_T[j]`` are the ``(batch, hidden)`` [CLS] states of the j-th matched layer pair;
    the mean runs over layers, batch and hidden units (``F.mse_loss`` on the stacked ``(layers, batch,
    hidden)`` tensors), i.e. ``slimnlp.losses.pkd.pkd_loss / (layers · hidden)``. The teacher side is not
    detached.
    """
    if len(cls_S) != len(cls_T) or not cls_S:
        raise ValueError(
            f"need the same non-zero number of student and teacher layers, got {len(cls_S)} and {len(cls_T)}"
        )
    h_S, h_T = torch.stack(list(cls_S)), torch.stack(list(cls_T))
    if h_S.shape != h_T.shape or h_S.dim() != 3:
        raise ValueError(
            f"[CLS] states must be (batch, hidden) of one shape, got {tuple(h_S.shape[1:])} and "
            f"{tuple(h_T.shape[1:])}"
        )
    return F.mse_loss(F.normalize(h_S, dim=-1), F.normalize(h_T, dim=-1))
