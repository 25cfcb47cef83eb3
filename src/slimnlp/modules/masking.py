"""Weight masks for unstructured pruning, as ``torch.nn.utils.parametrize`` parametrizations of ``weight``.

A masked Linear computes with ``weight * mask`` on every forward; the mask comes from an importance score:

- ``MagnitudeMask``: the top ``keep`` fraction of ``|W|`` (Zhu & Gupta 2017; recomputed from the current
  weights at every forward, so a gradually pruned weight can come back while the level still allows it);
- ``ScoreTopKMask``: the top ``keep`` fraction of learned scores ``S``, with the straight-through estimator
  ``∂L/∂S = ∂L/∂M`` — movement pruning (Sanh et al. 2020), whose scores accumulate ``−W·∂L/∂W``;
- ``ScoreThresholdMask``: ``σ(S) > τ`` with the same estimator — soft movement pruning, whose sparsity is
  set by the L1 penalty on ``σ(S)`` rather than by a count;
- ``HardConcreteMask``: Louizos et al.'s stochastic L0 gates, sampled in training, deterministic in evaluation;
- ``FixedMask``: a 0/1 buffer found beforehand (a lottery ticket's mask between rounds).

The level (``keep`` or ``τ``) is a buffer: a technique sets it every step from its schedule, and it travels
in checkpoints with the scores, so a resumed or restored model masks exactly as it did. The mechanics
follow the authors' ``emmental`` modules (``huggingface/transformers``,
``examples/research_projects/movement-pruning``): top-k by sorting, ties broken by the sort; at least
0.5% of a matrix survives a threshold. ``materialize`` removes the parametrizations, leaving plain
``nn.Linear`` weights with the pruned entries set to zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, autograd, nn
from torch.nn.utils import parametrize

# emmental's ThresholdBinarizer keeps at least this fraction of a matrix, so no layer is cut off entirely.
MIN_KEPT_BY_THRESHOLD = 0.005


def kept_count(keep: float, numel: int) -> int:
    """``int(keep · numel)`` as the reference counts, robust to float error (0.99 · 100 is 98.99999…)."""
    return int(round(keep * numel, 6))


def top_fraction(importance: Tensor, keep: float) -> Tensor:
    """0/1 mask (importance's dtype) of the ``kept_count(keep, numel)`` largest entries."""
    k = kept_count(keep, importance.numel())
    mask = torch.zeros(importance.numel(), dtype=importance.dtype, device=importance.device)
    if k > 0:
        mask[torch.topk(importance.flatten(), k, sorted=False).indices] = 1.0
    return mask.view_as(importance)


def above(importance: Tensor, threshold: float) -> Tensor:
    """0/1 mask of ``importance > threshold``, keeping at least 0.5% of the entries (the largest)."""
    mask = (importance > threshold).to(importance.dtype)
    at_least = int(MIN_KEPT_BY_THRESHOLD * importance.numel()) + 1
    if mask.sum() < at_least:
        return top_fraction(importance, at_least / importance.numel())
    return mask


class _StraightThroughTopK(autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, keep: float) -> Tensor:
        return top_fraction(scores, keep)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through_top_fraction(scores: Tensor, keep: float) -> Tensor:
    """0/1 mask of the top ``keep`` fraction of ``scores`` whose gradient passes to the scores unchanged
    (movement pruning's estimator), for scores outside a weight parametrization (head and unit scores)."""
    return _StraightThroughTopK.apply(scores, float(keep))


class _StraightThroughThreshold(autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float) -> Tensor:
        return above(torch.sigmoid(scores), threshold)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class WeightMask(nn.Module):
    """Base parametrization: ``forward(W) = W · mask``; ``level`` is the fraction kept or the threshold."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.register_buffer("level", torch.tensor(float(level)))

    def set_level(self, level: float) -> None:
        self.level.fill_(float(level))

    def mask(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def kept(self, weight: Tensor) -> int:
        """Entries this mask keeps."""
        return int(torch.count_nonzero(self.mask(weight)))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask(weight)


class TopFractionMask(WeightMask):
    """Keep the ``level`` fraction of entries largest in ``importance``."""

    def importance(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def kept(self, weight: Tensor) -> int:
        return kept_count(float(self.level), weight.numel())


class MagnitudeMask(TopFractionMask):
    """Keep the ``level`` fraction of weights largest in magnitude."""

    def __init__(self, level: float = 1.0) -> None:
        super().__init__(level)

    def importance(self, weight: Tensor) -> Tensor:
        return weight.detach().abs()

    def mask(self, weight: Tensor) -> Tensor:
        return top_fraction(self.importance(weight), float(self.level))


class ScoreTopKMask(TopFractionMask):
    """Movement pruning: learned scores (``mask_init=constant``, ``mask_scale``: emmental's defaults 0), top
    ``level`` fraction kept, straight-through gradient to the scores."""

    def __init__(self, shape: torch.Size, init: float = 0.0, level: float = 1.0) -> None:
        super().__init__(level)
        self.scores = nn.Parameter(torch.full(tuple(shape), float(init)))

    def importance(self, weight: Tensor) -> Tensor:
        return self.scores.detach()

    def mask(self, weight: Tensor) -> Tensor:
        return _StraightThroughTopK.apply(self.scores, float(self.level))


class ScoreThresholdMask(WeightMask):
    """Soft movement pruning: keep ``σ(S) > level``; straight-through gradient to the scores."""

    def __init__(self, shape: torch.Size, init: float = 0.0, level: float = 0.0) -> None:
        super().__init__(level)
        self.scores = nn.Parameter(torch.full(tuple(shape), float(init)))

    def mask(self, weight: Tensor) -> Tensor:
        return _StraightThroughThreshold.apply(self.scores, float(self.level))


class HardConcreteMask(WeightMask):
    """L0 gates (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0 Regularization"):
    one ``log α`` per weight; a training forward samples ``z = min(1, max(0, σ((log u − log(1−u) + log α)/β)
    ·(r − l) + l))``, ``u ~ U(0, 1)``; ``P(z ≠ 0) = σ(log α − β log(−l/r))`` is the differentiable expected
    L0; evaluation uses ``deterministic`` (Louizos et al.'s ``σ(log α)(r − l) + l`` leaves many gates fractional
    but non-zero where the expected L0 is already low, so the count of expected zeros decides instead). ``l, r, β = −0.1, 1.1, 2/3`` and
    the uniform's ε as in the authors' ``L0_regularization`` code (and CoFi's ``l0_module``)."""

    LIMITS, BETA, EPSILON = (-0.1, 1.1), 2.0 / 3.0, 1e-6

    def __init__(self, shape: torch.Size, init_drop: float = 0.05) -> None:
        super().__init__(0.0)
        mean = math.log(1 - init_drop) - math.log(init_drop)  # the authors' droprate_init → log α
        self.log_alpha = nn.Parameter(torch.randn(tuple(shape)) * 1e-2 + mean)

    def mask(self, weight: Tensor) -> Tensor:
        if not self.training:
            return self.deterministic().to(weight.dtype)
        low, high = self.LIMITS
        u = torch.empty_like(self.log_alpha).uniform_(self.EPSILON, 1 - self.EPSILON)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.BETA)
        return (s * (high - low) + low).clamp(0.0, 1.0).to(weight.dtype)

    def deterministic(self) -> Tensor:
        """The test-time gates (evaluation and the export): 1 for the ``round(Σ P(z ≠ 0))`` largest ``log α``,
        0 elsewhere — CoFi's count of expected zeros (its ``deterministic_z``), kept binary so the test-time
        sparsity is the expected one and the export a plain sparse matrix."""
        keep = round(float(self.expected_nonzero())) / self.log_alpha.numel()
        return top_fraction(self.log_alpha.detach(), keep)

    def expected_nonzero(self) -> Tensor:
        """``Σ P(z ≠ 0)``: the expected number of weights this mask keeps."""
        low, high = self.LIMITS
        return torch.sigmoid(self.log_alpha - self.BETA * math.log(-low / high)).sum()

    @torch.no_grad()
    def kept(self, weight: Tensor) -> int:
        """Weights the test-time gates keep."""
        return int(torch.count_nonzero(self.deterministic()))


class FixedMask(WeightMask):
    """A mask that training does not change: ``keep`` (0/1) as found before (a lottery ticket's round)."""

    def __init__(self, keep: Tensor) -> None:
        super().__init__(float(keep.float().mean()))
        self.register_buffer("keep", keep.detach().clone().float())

    def mask(self, weight: Tensor) -> Tensor:
        return self.keep.to(weight.dtype)


def add_mask(linear: nn.Linear, mask: WeightMask) -> WeightMask:
    parametrize.register_parametrization(linear, "weight", mask)
    return mask


def masks_of(model: nn.Module) -> Iterator[tuple[str, WeightMask]]:
    """``(path of the Linear, its mask)`` for every masked weight in ``model``."""
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, WeightMask):
                    yield path, p


def materialize(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (``W · mask``, zeros where pruned) and drop masks and scores: the
    model is a plain one again, of the same shape."""
    for path, _ in list(masks_of(model)):
        parametrize.remove_parametrizations(model.get_submodule(path), "weight", leave_parametrized=True)
    return model


def zero_fraction(weights: Iterable[Tensor]) -> float:
    """Fraction of entries exactly zero over ``weights``: sparsity as measured, never as targeted."""
    zeros = total = 0
    for w in weights:
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0
