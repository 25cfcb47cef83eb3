"""Dictionary (codebook) weights with fp32 outliers: GOBO (Zadeh et al. 2020, "GOBO: Quantizing Attention-Based
NLP Models for Low Latency and Energy Efficient Inference"), post-training, no data.

Per weight matrix: fit one Gaussian to all its weights; weights whose log-density under it falls below a
threshold (the paper's −4) are *outliers* and keep their fp32 value; every other weight is replaced by the
nearest of ``2^bits`` centroids (the paper's 3 bits: 8), found by an iterative assign / average procedure that
stops when the total absolute (L1) quantization error stops falling (the paper's convergence test, which it
prefers to the L2 one of plain k-means). The centroids start evenly spaced over the Gaussian group's range.

The authors did not release code; this follows the paper's text. Storage (``CodebookLinear``): the indices
``bits`` bit-planes of one bit per weight (``numel·bits/8`` bytes), the centroids, and the outliers as flat int32
positions plus fp32 values, so ``eff/disk_bytes`` is what GOBO's format needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimnlp.artifacts import register_module_kind
from slimnlp.modules.decoded import DecodedOnce
from slimnlp.modules.quantization import tensor_bytes

_BIT = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def gaussian_outliers(weight: Tensor, log_prob_threshold: float) -> Tensor:
    """Mask of the weights whose log-density under the matrix's own Gaussian is below the threshold."""
    w = weight.detach().double()
    mean, std = w.mean(), w.std().clamp_min(1e-12)
    log_density = -0.5 * ((w - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density < log_prob_threshold


def fit_centroids(values: Tensor, levels: int, max_iterations: int = 100) -> tuple[Tensor, Tensor]:
    """Centroids (float32 [levels]) and each value's index (int64): assign to the nearest, move each centroid to
    the mean of its values, until the L1 error stops decreasing; the best iterate is returned."""
    v = values.detach().float().flatten()
    centroids = torch.linspace(float(v.min()), float(v.max()), levels)
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(max_iterations):
        index = (v[:, None] - centroids[None, :]).abs().argmin(dim=1)
        error = float((v - centroids[index]).abs().sum())
        if best is not None and error >= best[0]:
            break
        best = (error, centroids.clone(), index)
        sums = torch.zeros(levels).index_add_(0, index, v)
        counts = torch.bincount(index, minlength=levels).float()
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    assert best is not None
    return best[1], best[2]


def pack_planes(index: Tensor, bits: int) -> Tensor:
    """Indices < 2^bits → uint8 [bits, ceil(n/8)]: bit-plane k holds bit k of every index, eight to a byte."""
    flat = index.flatten().to(torch.int64)
    padded = F.pad(flat, (0, -flat.numel() % 8))
    planes = [((padded >> k) & 1).to(torch.uint8).view(-1, 8) for k in range(bits)]
    return torch.stack([(p * _BIT).sum(dim=1, dtype=torch.uint8) for p in planes])


def unpack_planes(planes: Tensor, numel: int) -> Tensor:
    bits = ((planes.unsqueeze(-1) & _BIT) != 0).flatten(1)[:, :numel].to(torch.int64)
    return sum(bits[k] << k for k in range(planes.shape[0]))


@register_module_kind("codebook_linear")
class CodebookLinear(DecodedOnce):
    """A Linear stored as ``bits``-bit indices into ``centroids`` plus fp32 outliers; its weight is rebuilt once,
    on the first forward pass (the model computes in fp32: GOBO's saving is memory, its kernel is a lookup)."""

    def __init__(self, in_features: int, out_features: int, *, bits: int, outliers: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        numel = in_features * out_features
        self.register_buffer("planes", torch.zeros(bits, -(-numel // 8), dtype=torch.uint8))
        self.register_buffer("centroids", torch.zeros(2**bits))
        self.register_buffer("outlier_positions", torch.zeros(outliers, dtype=torch.int32))
        self.register_buffer("outlier_values", torch.zeros(outliers))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, bits: int = 3, log_prob_threshold: float = -4.0) -> CodebookLinear:
        w = linear.weight.detach().float().cpu()
        outlier = gaussian_outliers(w, log_prob_threshold).flatten()
        centroids, index = fit_centroids(w.flatten()[~outlier], 2**bits)
        full_index = torch.zeros(w.numel(), dtype=torch.int64)
        full_index[~outlier] = index
        module = cls(linear.in_features, linear.out_features, bits=bits, outliers=int(outlier.sum()),
                     bias=linear.bias is not None)
        module.planes.copy_(pack_planes(full_index, bits))
        module.centroids.copy_(centroids)
        module.outlier_positions.copy_(outlier.nonzero().flatten().to(torch.int32))
        module.outlier_values.copy_(w.flatten()[outlier])
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def artifact_spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "outliers": int(self.outlier_positions.numel()), "bias": self.bias is not None}

    @classmethod
    def from_artifact_spec(cls, spec: dict) -> CodebookLinear:
        spec = dict(spec)
        return cls(int(spec.pop("in_features")), int(spec.pop("out_features")), **spec)

    @property
    def num_weights(self) -> int:
        return self.in_features * self.out_features

    def index(self) -> Tensor:
        return unpack_planes(self.planes, self.num_weights)

    def dense_weight(self) -> Tensor:
        flat = self.centroids[self.index()]
        flat[self.outlier_positions.long()] = self.outlier_values
        return flat.view(self.out_features, self.in_features)

    def stored_bytes(self) -> int:
        return tensor_bytes(self.planes, self.centroids, self.outlier_positions, self.outlier_values)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.decoded_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"outliers={self.outlier_positions.numel()}")
