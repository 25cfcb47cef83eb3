"""Patient Knowledge Distillation (Sun et al. 2019): match normalized [CLS] states layer by layer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pkd_loss(cls_S: list[Tensor], cls_T: list[Tensor]) -> Tensor:
    """Sun et al. 2019, "Patient Knowledge Distillation for BERT Model Compression", §3 (patient teacher loss).

    ``L_PT = Σ_j ‖ h_S,j / ‖h_S,j‖₂ − h_T,j / ‖h_T,j‖₂ ‖²₂`` over the matched layer pairs ``j``,
    averaged over the batch. ``cls_S[j]`` and ``cls_T[j]`` are the ``(batch, hidden)`` [CLS] states of
    the j-th matched pair (PKD-Skip or PKD-Last picks which teacher layers). Only [CLS] is used, so
    padding never enters.

    Normalizing makes the loss depend on direction only, bounded by 4 per layer. This is the paper's
    sum (also TextBrewer's ``pkd_loss`` summed over matches); the authors' code
    (``src/KD_loss.py::patience_loss``) takes ``F.mse_loss`` over (batch, layers, hidden), i.e. this
    value divided by ``layers · hidden`` — their β ∈ {10…1000} is tuned on that scale.
    """
    if len(cls_S) != len(cls_T) or not cls_S:
        raise ValueError(
            f"need the same non-zero number of student and teacher layers, got {len(cls_S)} and {len(cls_T)}"
        )
    loss = cls_S[0].new_zeros(())
    for j, (h_S, h_T) in enumerate(zip(cls_S, cls_T)):
        if h_S.dim() != 2 or h_S.shape != h_T.shape:
            raise ValueError(
                f"layer pair {j}: [CLS] states must both be (batch, hidden), got student {tuple(h_S.shape)} "
                f"and teacher {tuple(h_T.shape)} (project the student first if the widths differ)"
            )
        diff = F.normalize(h_S, dim=-1) - F.normalize(h_T.detach(), dim=-1)
        loss = loss + diff.pow(2).sum(-1).mean()
    return loss
