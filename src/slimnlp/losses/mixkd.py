"""MixKD (Liang et al. 2021): distill on mixup interpolations of the training inputs.

"MixKD: Towards Efficient Distillation of Large-scale Language Models" (ICLR 2021) mixes pairs of
examples in word-embedding space, ``ê = λ·e_i + (1−λ)·e_j`` with ``λ ~ Beta(α, α)``, and trains the
student to match the teacher's outputs on ``ê`` (its student-mixup term also uses the mixed labels
``λ·y_i + (1−λ)·y_j``). Tokens are discrete, so the interpolation happens on embeddings. The paper does
not spell out padding; slimnlp lets the mixed example attend to the union of both masks,
``max(mask_i, mask_j)``, so no real token of either sentence is hidden.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def mixup(emb: Tensor, lam: float | Tensor, perm: Tensor) -> Tensor:
    """``λ·x + (1−λ)·x[perm]`` along the batch (dim 0): embeddings, one-hot labels or soft targets alike.

    ``lam`` is one float for the batch (as in the paper) or a ``(batch,)`` tensor, one λ per example;
    ``perm`` is a permutation of the batch indices (``torch.randperm``).
    """
    if perm.shape != (emb.shape[0],):
        raise ValueError(f"perm must be ({emb.shape[0]},) to match the batch, got {tuple(perm.shape)}")
    if isinstance(lam, Tensor) and lam.dim() > 0:
        if lam.shape != (emb.shape[0],):
            raise ValueError(f"per-example lam must be ({emb.shape[0]},), got {tuple(lam.shape)}")
        lam = lam.reshape(-1, *([1] * (emb.dim() - 1)))
    return lam * emb + (1 - lam) * emb[perm]


def sample_mixup_lambda(alpha: float, generator: np.random.Generator) -> float:
    """Draw the mixing weight ``λ ~ Beta(α, α)`` (Zhang et al. 2018 mixup; small α keeps λ near 0 or 1).

    A NumPy generator because ``torch.distributions.Beta`` cannot take a seeded ``torch.Generator``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return float(generator.beta(alpha, alpha))
