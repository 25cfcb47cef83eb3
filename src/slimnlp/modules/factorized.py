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

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None) -> FactorizedLinear:
        """From ``A`` [rank, in] and ``B`` [out, rank] (any factorization ``W ≈ B·A``, e.g. DRONE's)."""
        factorized = cls(A.shape[1], B.shape[0], A.shape[0], bias=bias is not None)
        factorized.to(device=A.device, dtype=A.dtype)
        with torch.no_grad():
            factorized.A.weight.copy_(A)
            factorized.B.weight.copy_(B)
            if bias is not None:
                factorized.B.bias.copy_(bias.detach())
        return factorized

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> FactorizedLinear:
        """The rank-``rank`` truncated SVD of ``linear`` (exact at full rank), on its device and dtype."""
        return cls.from_factors(*weight_spectrum(linear.weight).factors(rank), linear.bias)

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



@register_module_kind("factorized_embedding")
class FactorizedEmbedding(nn.Module):
    """ALBERT's factorized embedding parameterization (Lan et al. 2020, §3.1): a ``V × E`` table followed by an
    ``E × H`` projection instead of one ``V × H`` table, ``V·E + E·H`` weights instead of ``V·H``. A drop-in
    replacement for the word-embedding ``nn.Embedding``: ids in, ``H``-wide vectors out."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.padding_idx = padding_idx
        self.table = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.projection = nn.Linear(rank, embedding_dim, bias=False)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, spectrum: Spectrum, rank: int) -> FactorizedEmbedding:
        """From the rank-``rank`` SVD of ``embedding``'s table (``spectrum`` of its weight): rows ``U_r·√S_r``,
        projection ``√S_r·V_rᵀ``."""
        A, B = spectrum.factors(rank)  # weight [V, H] ≈ B [V, r] · A [r, H]
        factorized = cls(embedding.num_embeddings, embedding.embedding_dim, rank, embedding.padding_idx)
        factorized.to(device=A.device, dtype=A.dtype)
        with torch.no_grad():
            factorized.table.weight.copy_(B)
            factorized.projection.weight.copy_(A.T)
        return factorized

    def forward(self, ids: Tensor) -> Tensor:
        return self.projection(self.table(ids))

    @property
    def weight(self) -> Tensor:
        """The ``V × H`` table this factorization stands for (for code that reads ``word_embeddings.weight``); a
        table quantized by a later technique is read through its ``dense_weight``."""
        dense = getattr(self.table, "dense_weight", None)
        return self.projection(dense() if dense is not None else self.table.weight)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, rank={self.rank}"

    def artifact_spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "rank": self.rank,
                "padding_idx": self.padding_idx}

    @classmethod
    def from_artifact_spec(cls, spec: dict) -> FactorizedEmbedding:
        return cls(int(spec["num_embeddings"]), int(spec["embedding_dim"]), int(spec["rank"]), spec.get("padding_idx"))

@dataclass(frozen=True)
class Spectrum:
    """The SVD ``U·diag(S)·Vhᵀ`` of the matrix a rank is chosen on, and the map back to the weight's input
    space (``unwhiten``, for DRONE; none for plain SVD). ``factors(r)`` splits the ``r`` leading singular values
    evenly between the two factors (``A = √S_r·Vh_r·unwhiten``, ``B = U_r·√S_r``), so neither factor's scale
    dominates when both are fine-tuned."""

    U: Tensor
    S: Tensor
    Vh: Tensor
    unwhiten: Tensor | None
    dtype: torch.dtype

    @property
    def full_rank(self) -> int:
        return self.S.numel()

    def rank_for_energy(self, energy: float) -> int:
        """The smallest rank whose singular values keep ``energy`` of the squared spectrum (Σ S_i²)."""
        kept = torch.cumsum(self.S.double() ** 2, 0) / (self.S.double() ** 2).sum()
        return min(int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype))) + 1, self.full_rank)

    def factors(self, rank: int) -> tuple[Tensor, Tensor]:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= self.full_rank:
            raise ConfigError("rank", rank, f"an integer in [1, {self.full_rank}] (min of the Linear's in/out features)")
        root = self.S[:rank].sqrt()
        A = root[:, None] * self.Vh[:rank]
        if self.unwhiten is not None:
            A = A @ self.unwhiten
        return A.to(self.dtype), (self.U[:, :rank] * root[None, :]).to(self.dtype)


def weight_spectrum(weight: Tensor) -> Spectrum:
    """Plain SVD of the weight: the factors minimise ``‖W − B·A‖_F`` (Eckart–Young). In float32 at least."""
    w = weight.detach()
    U, S, Vh = torch.linalg.svd(w.to(torch.promote_types(w.dtype, torch.float32)), full_matrices=False)
    return Spectrum(U, S, Vh, None, w.dtype)


def output_spectrum(weight: Tensor, gram: Tensor, damping: float = 1e-6) -> Spectrum:
    """DRONE's data-aware spectrum (Chen et al. 2021, §3): the factors minimise the error of the layer's
    *outputs* on calibration inputs ``X``, ``‖W·X − B·A·X‖_F``, whose closed form is the truncated SVD of
    ``W·G^{1/2}`` mapped back by ``G^{-1/2}``, with ``G = X·Xᵀ`` the inputs' Gram matrix (``gram``, [in, in]).
    ``damping`` adds ``damping·mean(eig G)`` to ``G``'s eigenvalues, so directions the data never visits keep
    the plain-SVD behaviour instead of an arbitrary one. In float64."""
    eigenvalues, Q = torch.linalg.eigh(gram.double())
    eigenvalues = eigenvalues.clamp_min(0) + damping * eigenvalues.clamp_min(0).mean()
    root = eigenvalues.sqrt()
    U, S, Vh = torch.linalg.svd(weight.detach().double() @ (Q * root), full_matrices=False)
    return Spectrum(U, S, Vh, (Q / root).T, weight.dtype)
