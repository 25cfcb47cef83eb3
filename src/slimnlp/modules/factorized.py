"""Low-rank factorized Linear layers, as plain torch.

A ``d_out × d_in`` weight ``W`` is replaced by two thin factors ``B·A`` of rank ``r``: ``r·(d_in + d_out)``
parameters instead of ``d_in·d_out``, and two thin matmuls instead of one wide one. Initializing the factors
from the truncated SVD of the trained weight gives the best rank-``r`` approximation in Frobenius norm
(Eckart–Young), the starting point that low-rank compression of BERT fine-tunes from (Noach & Goldberg
2020, "Compressing Pre-trained Language Models by Matrix Decomposition"; see also Chen et al. 2021,
"DRONE: Data-aware Low-rank Compression for Large NLP Models").

Importing this module registers the ``factorized_linear`` artifact kind, so ``slimnlp.artifacts`` can save
and rebuild models that contain it (the artifact manifest names this module, and ``load_student`` imports it).
"""

from __future__ import annotations

import torch
from torch import nn

from slimnlp.artifacts import register_module_kind
from slimnlp.errors import ConfigError


@register_module_kind("factorized_linear")
class FactorizedLinear(nn.Module):
    """``y = B(A(x))`` with ``A: Linear(in, rank, bias=False)`` and ``B: Linear(rank, out, bias)``.

    A drop-in replacement for an ``nn.Linear`` of shape ``(in_features, out_features)``: same input and
    output widths, so the surrounding model code (which only calls the module) does not change.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> FactorizedLinear:
        """The rank-``rank`` truncated SVD of ``linear`` (exact at full rank), on its device and dtype.

        ``W = U·diag(S)·Vᵀ``; ``A = sqrt(S_r)·V_rᵀ`` and ``B = U_r·sqrt(S_r)`` split the singular values
        evenly between the factors, so neither factor's scale dominates when both are fine-tuned. The bias
        is copied to ``B``. The SVD runs in float32 at least, whatever the Linear's dtype.
        """
        full = min(linear.in_features, linear.out_features)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
            raise ConfigError(
                "rank", rank, f"an integer in [1, {full}] (min of the Linear's in/out features)"
            )
        weight = linear.weight.detach()
        U, S, Vh = torch.linalg.svd(
            weight.to(torch.promote_types(weight.dtype, torch.float32)), full_matrices=False
        )
        root = S[:rank].sqrt()
        factorized = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        factorized.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            factorized.A.weight.copy_(root[:, None] * Vh[:rank])
            factorized.B.weight.copy_(U[:, :rank] * root[None, :])
            if linear.bias is not None:
                factorized.B.bias.copy_(linear.bias.detach())
        return factorized

    def artifact_spec(self) -> dict:
        """Constructor arguments (shapes only): the weights come from the artifact's safetensors file."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.B.bias is not None,
        }

    @classmethod
    def from_artifact_spec(cls, spec: dict) -> FactorizedLinear:
        return cls(int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"]), bool(spec["bias"]))
