"""Integer weights for Linear layers: symmetric linear quantization, its straight-through fake version for
quantization-aware training, packing of 4- and 2-bit codes, and ``QuantizedLinear``, the module a quantized
artifact is made of (pure torch; torchao and torch.ao only supply kernels).

Quantization. A weight ``w`` is split into blocks — the whole matrix (``per_tensor``, Q8BERT, Zafrir et al.
2019), one row per output unit (``per_channel``) or ``group_size`` consecutive inputs of a row (``group``:
Q-BERT's group-wise ranges, Shen et al. 2020) — and each block gets one scale ``s = max|w| / ((q_max − q_min)/2)``
with integer codes ``q = clamp(round(w/s), q_min, q_max)`` in the full signed range ``[−2^(b−1), 2^(b−1)−1]``.
This is torchao's symmetric mapping (``get_group_qparams_symmetric``) exactly, so that codes computed here
for a layer torchao fake-quantized during training are the codes it trained with. Ternary weights (TWN, Li et
al. 2016, as TernaryBERT uses them) are the 2-bit codes {−1, 0, 1} with the TWN threshold and scale.

The straight-through estimator (Bengio et al. 2013; Jacob et al. 2018): the forward pass rounds, the backward
pass is the identity inside the clipping range and zero outside it.

Storage. 8-bit codes are int8; 4- and 2-bit codes are stored offset to unsigned and packed two or four to a
byte along each row, so a 2-bit matrix takes 1/16 of its fp32 bytes plus its scales.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimnlp.artifacts import register_module_kind

BITS = (8, 4, 2)
GRANULARITIES = ("per_tensor", "per_channel", "group")
KERNELS = ("fbgemm", "torchao", "dequant")  # how a QuantizedLinear computes (see its docstring)
TERNARY = "ternary"
TWN_THRESHOLD = 0.7  # TWN: Delta = 0.7 * mean|W| (Li et al. 2016, eq. 13; TernaryBERT's default)


def code_range(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits``-bit codes (torchao's, and torch's qint8 for 8)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _blocks(weight: Tensor, granularity: str, group_size: int | None) -> Tensor:
    """``weight`` [out, in] viewed as [rows, blocks, block width]: one scale per (row, block)."""
    out, width = weight.shape
    if granularity == "per_tensor":
        return weight.reshape(1, 1, -1)
    if granularity == "per_channel":
        return weight.reshape(out, 1, width)
    if granularity == "group":
        if not group_size or width % group_size:
            raise ValueError(f"group_size {group_size} does not divide the input width {width}")
        return weight.reshape(out, width // group_size, group_size)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def scale_shape(out_features: int, in_features: int, granularity: str, group_size: int | None) -> tuple[int, int]:
    """Shape of the scales of an [out, in] weight: [1, 1], [out, 1] or [out, in / group_size]."""
    return tuple(_blocks(torch.empty(out_features, in_features, device="meta"), granularity, group_size).shape[:2])


def symmetric_scale(weight: Tensor, bits: int, granularity: str, group_size: int | None = None) -> Tensor:
    """Per-block scale that maps the block's largest magnitude to half the code range (torchao's formula)."""
    qmin, qmax = code_range(bits)
    absmax = _blocks(weight.detach(), granularity, group_size).abs().amax(dim=-1)
    return (absmax / ((qmax - qmin) / 2)).clamp_min(torch.finfo(torch.float32).smallest_normal).float()


def _expand(scale: Tensor, shape: torch.Size) -> Tensor:
    """Per-block scales [rows, blocks] broadcast to every entry of a weight of ``shape``."""
    return scale.repeat_interleave(shape[1] // scale.shape[1], dim=1).expand(shape)


def quantize(weight: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Integer codes (int8 tensor) of ``weight`` at ``scale`` (per block, as ``symmetric_scale`` returns)."""
    qmin, qmax = code_range(bits)
    # x * (1/s), not x / s: torchao rounds the product, and ties must fall the same way as in its fake quant
    codes = torch.round(weight.detach().float() * (1.0 / _expand(scale, weight.shape))).clamp_(qmin, qmax)
    return codes.to(torch.int8)


def tensor_bytes(*tensors: Tensor) -> int:
    """Bytes the tensors take as stored: what a coded weight costs on disk (codes, scales, signs …)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    return codes.float() * _expand(scale, codes.shape)


class _RoundSTE(torch.autograd.Function):
    """``clamp(round(x/s), q_min, q_max)·s`` forward; the gradient passes unchanged where ``x/s`` lies in
    ``[q_min, q_max]`` and is zero where the forward pass clipped."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
        ratio = x * (1.0 / scale)
        ctx.save_for_backward((ratio >= qmin) & (ratio <= qmax))
        return torch.round(ratio).clamp(qmin, qmax) * scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize ``x`` at ``scale`` (broadcastable to ``x``) with the straight-through estimator."""
    qmin, qmax = code_range(bits)
    return _RoundSTE.apply(x, scale, qmin, qmax)


def twn_ternarize(weight: Tensor, per_row: bool = False) -> tuple[Tensor, Tensor]:
    """TWN codes in {−1, 0, 1} (int8) and the scale α: entries with ``|w| > Δ = 0.7·mean|w|`` keep their sign, α
    is their mean magnitude (Li et al. 2016). One Δ and α for the whole matrix (a [1, 1] α, TernaryBERT's
    Linears), or with ``per_row`` one per row along the last dimension (α of shape [..., 1]: TernaryBERT's word
    embeddings, ``TwnQuantizer`` with ``layerwise=False``). A row with nothing above Δ (all zeros) gets α = max|w|."""
    w = weight.detach().float()
    dims = -1 if per_row else tuple(range(w.dim()))
    magnitude = w.abs()
    kept = magnitude > TWN_THRESHOLD * magnitude.mean(dim=dims, keepdim=True)
    count = kept.sum(dim=dims, keepdim=True)
    alpha = torch.where(count > 0, (magnitude * kept).sum(dim=dims, keepdim=True) / count.clamp_min(1),
                        magnitude.amax(dim=dims, keepdim=True))
    return (torch.sign(w) * kept).to(torch.int8), alpha.clamp_min(torch.finfo(torch.float32).smallest_normal)


def fake_ternarize(weight: Tensor, per_row: bool = False) -> Tensor:
    """TWN ternarization with the straight-through estimator (TernaryBERT's forward; gradient unchanged)."""
    codes, alpha = twn_ternarize(weight, per_row)
    return weight + (codes.float() * alpha - weight).detach()


# ---------------------------------------------------------------- packing


def packed_width(in_features: int, bits: int) -> int:
    per_byte = 8 // bits
    return -(-in_features // per_byte)


def pack(codes: Tensor, bits: int) -> Tensor:
    """Codes [out, in] of ``bits`` < 8 → uint8 [out, ceil(in·bits/8)]: offset to unsigned, the first code of
    each byte in its lowest bits."""
    qmin, _ = code_range(bits)
    per_byte = 8 // bits
    unsigned = (codes.to(torch.int16) - qmin).to(torch.uint8)
    pad = packed_width(codes.shape[1], bits) * per_byte - codes.shape[1]
    unsigned = F.pad(unsigned, (0, pad)).reshape(codes.shape[0], -1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
    return (unsigned << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: Tensor, bits: int, in_features: int) -> Tensor:
    """Inverse of ``pack``: the int8 codes [out, in_features]."""
    qmin, _ = code_range(bits)
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
    unsigned = (packed.unsqueeze(-1) >> shifts) & (2**bits - 1)
    return (unsigned.reshape(packed.shape[0], -1)[:, :in_features].to(torch.int16) + qmin).to(torch.int8)


# ---------------------------------------------------------------- activations


def per_token_fake_quant(x: Tensor) -> Tensor:
    """8-bit asymmetric per-token fake quantization of activations, as torchao's QAT applies it (its
    ``IntxFakeQuantizer`` with ``per_token``): the same function at training and at inference."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig, IntxFakeQuantizer

    return IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False))(x)


# ---------------------------------------------------------------- modules


class FakeQuantLinear(nn.Linear):
    """A Linear trained through fake-quantized weights (and activations): slimnlp's own QAT module, for what
    torchao's QAT does not cover — per-tensor weight ranges (Q8BERT) and ternary weights (TernaryBERT).
    ``bits`` is 8, 4, 2 or ``"ternary"``; ``activation_bits`` 8 or None."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int | str = 8,
                 granularity: str = "per_tensor", group_size: int | None = None,
                 activation_bits: int | None = 8) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.bits, self.granularity, self.group_size = bits, granularity, group_size
        self.activation_bits = activation_bits

    @classmethod
    def from_linear(cls, linear: nn.Linear, **settings: Any) -> FakeQuantLinear:
        fq = cls(linear.in_features, linear.out_features, linear.bias is not None, **settings)
        fq.to(linear.weight.device, linear.weight.dtype)
        fq.weight, fq.bias = linear.weight, linear.bias  # the same Parameters: the optimizer trains them
        return fq

    def quantized_weight(self) -> Tensor:
        if self.bits == TERNARY:
            return fake_ternarize(self.weight)
        scale = symmetric_scale(self.weight, self.bits, self.granularity, self.group_size)
        return fake_quantize(self.weight, _expand(scale, self.weight.shape), self.bits)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation_bits:
            x = per_token_fake_quant(x)
        return F.linear(x, self.quantized_weight(), self.bias)


@register_module_kind("quantized_linear")
class QuantizedLinear(nn.Module):
    """A Linear whose weight is stored as integer codes and scales (``codes``, ``scale`` buffers; plain tensors,
    so the artifact is safetensors), computed by one of three kernels:

    - ``fbgemm``: 8-bit weights on torch's int8 CPU kernel with dynamically quantized activations
      (``quantized::linear_dynamic``, the kernel ``torch.ao.quantization.quantize_dynamic`` uses);
    - ``torchao``: 8-bit per-channel weights as a torchao ``Int8Tensor`` (int8 dynamic-activation/int8-weight);
    - ``dequant``: any width; the codes are unpacked and dequantized once, on the first forward pass, and the
      activations fake-quantized per token when ``activation_bits`` (so the model computes what it trained).

    The kernel's prepared form is built lazily and never stored: the artifact holds only codes and scales.
    """

    def __init__(self, in_features: int, out_features: int, *, bits: int, granularity: str,
                 group_size: int | None = None, bias: bool = True, kernel: str = "dequant",
                 activation_bits: int | None = None) -> None:
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel == "fbgemm" and (bits != 8 or granularity == "group"):
            raise ValueError("kernel 'fbgemm' runs 8-bit per-tensor or per-channel weights only")
        if kernel == "torchao" and (bits != 8 or granularity != "per_channel"):
            raise ValueError("kernel 'torchao' runs 8-bit per-channel weights only")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.granularity, self.group_size = bits, granularity, group_size
        self.kernel, self.activation_bits = kernel, activation_bits
        width = in_features if bits == 8 else packed_width(in_features, bits)
        self.register_buffer("codes", torch.zeros(out_features, width, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scale", torch.ones(scale_shape(out_features, in_features, granularity, group_size)))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._runtime: Any = None

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, bias: Tensor | None, **spec: Any) -> QuantizedLinear:
        """From int8 codes [out, in] and their scales (packed here when ``bits`` < 8)."""
        out_features, in_features = codes.shape
        q = cls(in_features, out_features, bias=bias is not None, **spec)
        with torch.no_grad():
            q.codes.copy_(codes if q.bits == 8 else pack(codes.cpu(), q.bits))
            q.scale.copy_(scale.reshape(q.scale.shape))
            if bias is not None:
                q.bias.copy_(bias.detach())
        return q

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int, granularity: str, group_size: int | None = None,
                    **spec: Any) -> QuantizedLinear:
        """Quantize a float Linear's weight with ``symmetric_scale``."""
        scale = symmetric_scale(linear.weight, bits, granularity, group_size)
        codes = quantize(linear.weight, scale, bits)
        return cls.from_codes(codes, scale, linear.bias, bits=bits, granularity=granularity,
                              group_size=group_size, **spec)

    # ------------------------------------------------------------ artifact kind
    def artifact_spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "granularity": self.granularity, "group_size": self.group_size, "bias": self.bias is not None,
                "kernel": self.kernel, "activation_bits": self.activation_bits}

    @classmethod
    def from_artifact_spec(cls, spec: dict) -> QuantizedLinear:
        spec = dict(spec)
        return cls(int(spec.pop("in_features")), int(spec.pop("out_features")), **spec)

    # ------------------------------------------------------------ weights
    def int_codes(self) -> Tensor:
        return self.codes if self.bits == 8 else unpack(self.codes, self.bits, self.in_features)

    def dense_weight(self) -> Tensor:
        return dequantize(self.int_codes(), self.scale)

    @property
    def num_weights(self) -> int:
        return self.in_features * self.out_features

    def stored_bytes(self) -> int:
        """Bytes of the stored weight: codes and scales."""
        return tensor_bytes(self.codes, self.scale)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._runtime = None  # new codes: the prepared kernel must be rebuilt
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedLinear:
        self._runtime = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_runtime"] = None  # prepared kernels are not picklable (deepcopy, checkpoints): rebuilt on use
        return state

    # ------------------------------------------------------------ forward
    def _prepare(self) -> Any:
        bias = None if self.bias is None else self.bias.detach()
        if self.kernel == "fbgemm":
            if self.granularity == "per_tensor":
                qweight = torch._make_per_tensor_quantized_tensor(self.codes, float(self.scale), 0)
            else:
                scales = self.scale.reshape(-1).double()
                qweight = torch._make_per_channel_quantized_tensor(
                    self.codes, scales, torch.zeros_like(scales, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(qweight, bias)
        if self.kernel == "torchao":
            from torchao.quantization import Int8Tensor
            from torchao.quantization.granularity import PerRow
            from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

            return Int8Tensor(self.codes, self.scale.reshape(-1, 1), [1, self.in_features], torch.float32,
                              act_quant_kwargs=QuantizeTensorToInt8Kwargs(granularity=PerRow()))
        return self.dense_weight()

    def forward(self, x: Tensor) -> Tensor:
        if self._runtime is None:
            self._runtime = self._prepare()
        if self.kernel == "fbgemm":
            return torch.ops.quantized.linear_dynamic(x, self._runtime, True)  # reduce_range, as torch.ao does
        if self.kernel == "dequant" and self.activation_bits:
            x = per_token_fake_quant(x)
        return F.linear(x, self._runtime, None if self.bias is None else self.bias)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.granularity == "group" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"granularity={self.granularity}{group}, kernel={self.kernel}")


@register_module_kind("quantized_embedding")
class QuantizedEmbedding(nn.Module):
    """An embedding table as integer rows with one fp32 scale per row: 8-bit symmetric codes (``bits=8``, the
    ``embeddings`` target of every quantization technique) or TWN-ternary codes packed four to a byte
    (``bits=2``, TernaryBERT's word embeddings). A lookup gathers the coded rows and decodes only those, so the
    table stays as small in memory as on disk."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, bits: int = 8) -> None:
        super().__init__()
        if bits not in (8, 2):
            raise ValueError(f"bits must be 8 or 2 (ternary), got {bits!r}")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.bits = bits
        width, dtype = (embedding_dim, torch.int8) if bits == 8 else (packed_width(embedding_dim, bits), torch.uint8)
        self.register_buffer("codes", torch.zeros(num_embeddings, width, dtype=dtype))
        self.register_buffer("scale", torch.ones(num_embeddings, 1))

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, padding_idx: int | None = None, bits: int = 8) -> QuantizedEmbedding:
        """From int8 codes [rows, dim] and one scale per row (packed here when ``bits`` is 2)."""
        q = cls(codes.shape[0], codes.shape[1], padding_idx, bits)
        with torch.no_grad():
            q.codes.copy_(codes if bits == 8 else pack(codes.cpu(), bits))
            q.scale.copy_(scale.reshape(q.scale.shape))
        return q

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, embedding: nn.Embedding) -> QuantizedEmbedding:
        """8-bit rows of a float table (weight-only, round to nearest)."""
        scale = symmetric_scale(embedding.weight, 8, "per_channel")
        return cls.from_codes(quantize(embedding.weight, scale, 8), scale, embedding.padding_idx)

    def artifact_spec(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, "bits": self.bits}

    @classmethod
    def from_artifact_spec(cls, spec: dict) -> QuantizedEmbedding:
        return cls(int(spec["num_embeddings"]), int(spec["embedding_dim"]), spec.get("padding_idx"),
                   int(spec.get("bits", 8)))  # artifacts saved before ternary tables were int8

    @property
    def num_weights(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def stored_bytes(self) -> int:
        return tensor_bytes(self.codes, self.scale)

    def _decode(self, codes: Tensor) -> Tensor:
        return codes if self.bits == 8 else unpack(codes, self.bits, self.embedding_dim)

    def dense_weight(self) -> Tensor:
        return dequantize(self._decode(self.codes), self.scale)

    def forward(self, ids: Tensor) -> Tensor:
        rows = self._decode(F.embedding(ids.reshape(-1), self.codes)).float() * F.embedding(ids.reshape(-1), self.scale)
        return rows.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}"


class FakeTernaryEmbedding(nn.Embedding):
    """An embedding table trained through row-wise TWN ternarization with the straight-through estimator, as
    TernaryBERT's ``QuantizeEmbedding`` trains the word embeddings (``TwnQuantizer``, ``layerwise=False``). TWN is
    row-wise, so only the looked-up rows are ternarized: the same output and gradient as ternarizing the whole
    table, at the cost of the batch's rows. ``export`` gives the 2-bit ``QuantizedEmbedding``."""

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> FakeTernaryEmbedding:
        fake = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx,
                   device="meta")  # no second table: the wrapped Parameter below is the one trained
        fake.weight = embedding.weight
        return fake

    def forward(self, ids: Tensor) -> Tensor:
        return fake_ternarize(super().forward(ids), per_row=True)

    @torch.no_grad()
    def export(self) -> QuantizedEmbedding:
        codes, alpha = twn_ternarize(self.weight, per_row=True)
        return QuantizedEmbedding.from_codes(codes, alpha, self.padding_idx, bits=2)
