"""Binary weights for Linear layers, as BinaryBERT trains and stores them (Bai et al. 2021, ACL; reference code
huawei-noah/Pretrained-Language-Model ``BinaryBERT/``).

Binarization (BWN, Rastegari et al. 2016; the reference's ``BwnQuantizer``, layer-wise): a matrix ``w`` becomes
``α·sign(w)`` with one ``α = mean|w|``; the gradient passes straight through, unclipped. Here ``sign`` maps an
exact zero to +1 (torch's ``sign``, the reference's, maps it to 0, a third level) so that every weight is one
bit; latent weights are floats and never exactly zero in practice.

Ternary weight splitting (TWS, the paper's §3.1; ``binary_model_init.tws_split``): a latent weight ``w`` whose
TWN ternarization is ``t`` (``Δ = 0.7·mean|w|``, ``α`` the mean magnitude above ``Δ``) is split into two latent
weights ``w₁, w₂`` whose binarizations add up to ``t`` exactly: where ``t ≠ 0``, ``w₁ = m·w`` and ``w₂ = (1−m)·w``;
where ``t = 0``, ``w₁`` and ``w₂`` take opposite signs of equal binarized magnitude (``w + s`` / ``−s`` or ``s`` /
``w − s``), with ``s`` and ``m`` the closed forms of the reference (computed in float64 as there). The binary
model therefore starts exactly where the ternary one ended, with twice as many binary weights, and
fine-tuning then moves the two halves apart: the trained layer computes ``x·(α₁·b₁ + α₂·b₂)ᵀ``.

Storage (``BinaryLinear``): each plane's signs eight to a byte plus one fp32 ``α`` per plane, so a split layer
takes 2 bits per weight, a plain binary one 1 bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimnlp.artifacts import register_module_kind
from slimnlp.modules.codebook import pack_planes, unpack_planes
from slimnlp.modules.decoded import DecodedOnce
from slimnlp.modules.quantization import TWN_THRESHOLD, per_token_fake_quant, tensor_bytes


def bwn_binarize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Signs (bool, True for w >= 0) and the scale ``α = mean|w|`` (0-d) of a whole matrix (BWN, layer-wise)."""
    w = weight.detach()
    return w >= 0, w.abs().mean()


def fake_binarize(weight: Tensor) -> Tensor:
    """``α·sign(w)`` forward, identity gradient (the reference's ``BwnQuantizer``)."""
    positive, alpha = bwn_binarize(weight)
    binary = torch.where(positive, alpha, -alpha).to(weight.dtype)
    return weight + (binary - weight).detach()


@torch.no_grad()
def ternary_weight_split(weight: Tensor) -> tuple[Tensor, Tensor]:
    """TWS of one matrix (module docstring): two latent weights whose BWN binarizations sum to the TWN
    ternarization of ``weight``. Float64 inside, as the reference's ``use_double``."""
    w = weight.detach().double()
    delta = TWN_THRESHOLD * w.abs().mean()
    kept = w.abs() > delta
    alpha = w.abs()[kept].mean()
    zero = ~kept
    small = (alpha * w.numel() - w.abs().sum()) / (2.0 * zero.sum())
    a11 = torch.where(zero, 0.0, w)
    a12 = torch.where(zero, torch.where(w > 0, w + small, small), 0.0)
    a22 = torch.where(zero, torch.where(w < 0, w - small, -small), 0.0)
    m = (a11.abs().sum() + a22.abs().sum() - a12.abs().sum()) / (2.0 * a11.abs().sum())
    w1 = torch.where(zero, torch.where(w > 0, w + small, small), m * w)
    w2 = torch.where(zero, torch.where(w < 0, w - small, -small), (1.0 - m) * w)
    return w1.to(weight.dtype), w2.to(weight.dtype)


class _BinaryShape(nn.Module):
    """The shape both binary modules share: what their artifact spec records."""

    def __init__(self, in_features: int, out_features: int, planes: int, activation_bits: int | None) -> None:
        super().__init__()
        if planes not in (1, 2):
            raise ValueError(f"planes must be 1 (binary) or 2 (split from ternary), got {planes!r}")
        self.in_features, self.out_features, self.planes = in_features, out_features, planes
        self.activation_bits = activation_bits

    def artifact_spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "planes": self.planes,
                "bias": self.bias is not None, "activation_bits": self.activation_bits}

    @classmethod
    def from_artifact_spec(cls, spec: dict) -> nn.Module:
        spec = dict(spec)
        return cls(int(spec.pop("in_features")), int(spec.pop("out_features")), **spec)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, planes={self.planes}"


@register_module_kind("split_binary_linear")
class SplitBinaryLinear(_BinaryShape):
    """A Linear trained as a sum of ``planes`` binarized latent weights (BinaryBERT's ``query_1 + query_2``):
    two planes after TWS, one for plain BWN training. Activations are fake-quantized per token when
    ``activation_bits``. Saved with its latent weights, so a later training stage can take it over."""

    def __init__(self, in_features: int, out_features: int, *, planes: int = 2, bias: bool = True,
                 activation_bits: int | None = 8) -> None:
        super().__init__(in_features, out_features, planes, activation_bits)
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(out_features, in_features)) for _ in range(planes))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, *, split: bool, activation_bits: int | None) -> SplitBinaryLinear:
        """``split``: the two TWS halves of ``linear``'s weight; else the weight itself, binarized directly."""
        latent = ternary_weight_split(linear.weight) if split else (linear.weight,)
        layer = cls(linear.in_features, linear.out_features, planes=len(latent), bias=linear.bias is not None,
                    activation_bits=activation_bits).to(linear.weight.device)
        for param, value in zip(layer.weights, latent):
            param.copy_(value)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    def binary_weight(self) -> Tensor:
        return sum(fake_binarize(w) for w in self.weights)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation_bits:
            x = per_token_fake_quant(x)
        return F.linear(x, self.binary_weight(), self.bias)



@register_module_kind("binary_linear")
class BinaryLinear(DecodedOnce, _BinaryShape):
    """A binary Linear as stored: ``signs`` (uint8 [planes, ⌈in·out/8⌉], one bit per weight and plane) and
    ``scale`` (fp32 [planes]); the weight ``Σ_p scale_p·(±1)`` is decoded once, on the first forward pass (no
    CPU kernel computes on packed signs in torch), and activations are fake-quantized per token as in training."""

    def __init__(self, in_features: int, out_features: int, *, planes: int = 2, bias: bool = True,
                 activation_bits: int | None = 8) -> None:
        super().__init__(in_features, out_features, planes, activation_bits)
        self.register_buffer("signs", torch.zeros(planes, -(-in_features * out_features // 8), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(planes))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_split(cls, layer: SplitBinaryLinear) -> BinaryLinear:
        q = cls(layer.in_features, layer.out_features, planes=layer.planes, bias=layer.bias is not None,
                activation_bits=layer.activation_bits)
        for p, weight in enumerate(layer.weights):
            positive, alpha = bwn_binarize(weight)
            q.signs[p].copy_(pack_planes(positive.cpu(), 1)[0])
            q.scale[p] = alpha
        if layer.bias is not None:
            q.bias.copy_(layer.bias)
        return q

    @property
    def bits(self) -> int:
        """Bits per weight in the artifact."""
        return self.planes

    @property
    def num_weights(self) -> int:
        return self.in_features * self.out_features

    def stored_bytes(self) -> int:
        return tensor_bytes(self.signs, self.scale)

    def dense_weight(self) -> Tensor:
        shape = (self.out_features, self.in_features)
        signs = [unpack_planes(self.signs[p : p + 1], self.num_weights).view(shape) for p in range(self.planes)]
        return sum(self.scale[p] * (2.0 * s.to(self.scale.dtype) - 1.0) for p, s in enumerate(signs))

    def forward(self, x: Tensor) -> Tensor:
        if self.activation_bits:
            x = per_token_fake_quant(x)
        return F.linear(x, self.decoded_weight(), self.bias)

