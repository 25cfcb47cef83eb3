"""What every quantization technique shares: which Linears it quantizes, the one-line errors, the distillation
loss of quantization-aware training, and the ``compress/*`` figures of the integer artifact.

Quantized Linears are replaced by ``slimnlp.modules.quantization.QuantizedLinear`` (integer codes and scales,
saved as such), so ``eff/disk_bytes`` is the bytes of the integer artifact and ``load_student`` gives back the
same integer model. LayerNorms stay fp32; so do the embedding tables unless ``targets`` names ``embeddings``:
then they become int8 with one scale per row (``QuantizedEmbedding``, weight-only, after any training; TernaryBERT
trains its word table ternary instead), which matters for small encoders, whose embeddings are half their bytes
(MiniLM-L6: 47.7 of 91.6 MB).

Distillation (``distill``) follows TernaryBERT's ``quant_task_glue.py`` (Zhang et al. 2020): the soft cross
entropy to the full-precision teacher's logits plus, with ``intermediate_weight`` > 0, the MSE between every
hidden state (embedding output and each layer) and every layer's pre-softmax attention scores (padded keys
zeroed) of the two models; the reference adds the three with weight 1 and no hard-label loss, which is
``alpha=0, temperature=1, intermediate_weight=1`` here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimnlp.errors import ConfigError
from slimnlp.losses.kd import soft_cross_entropy
from slimnlp.losses.tinybert import attention_mse, hidden_mse
from slimnlp.models.capture import attention_scores, capture_qkv
from slimnlp.models.structure import prunable_modules
from slimnlp.models.surgery import replace_module
from slimnlp.modules.binary import BinaryLinear, SplitBinaryLinear
from slimnlp.modules.codebook import CodebookLinear
from slimnlp.modules.quantization import (
    FakeQuantLinear,
    FakeTernaryEmbedding,
    QuantizedEmbedding,
    QuantizedLinear,
)
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights

log = logging.getLogger(__name__)
QUANTIZABLE_PARTS = ("encoder", "pooler", "classifier", "embeddings")


def check_targets(targets: Sequence[str]) -> None:
    if not targets or any(t not in QUANTIZABLE_PARTS for t in targets):
        raise ConfigError("technique.targets", list(targets), f"a non-empty subset of {list(QUANTIZABLE_PARTS)}")


def quantized_paths(model: nn.Module) -> list[str]:
    """Paths of the modules that already hold quantized or fake-quantized weights."""
    from torchao.quantization.qat import FakeQuantizedLinear

    kinds = (QuantizedLinear, QuantizedEmbedding, FakeQuantLinear, FakeTernaryEmbedding, CodebookLinear,
             FakeQuantizedLinear, BinaryLinear, SplitBinaryLinear)
    return [path for path, module in model.named_modules() if isinstance(module, kinds)]


def check_float_student(model: nn.Module) -> None:
    """Quantizing twice would quantize rounded weights again and lose the float ones: refuse it, naming a layer."""
    if paths := quantized_paths(model):
        raise ConfigError("student", paths[0], "a float student (this one is already quantized: quantize the float "
                          "model it came from)")


def target_linears(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    check_targets(targets)
    check_float_student(model)
    return [(path, m) for path, m in prunable_modules(model, targets) if isinstance(m, nn.Linear)]


def quantized_embeddings(model: nn.Module, targets: Sequence[str]) -> dict[str, QuantizedEmbedding]:
    """The embedding tables as integer rows, when ``targets`` names ``embeddings`` (else nothing): a table trained
    ternary (``FakeTernaryEmbedding``, TernaryBERT's word embeddings) as its 2-bit codes, any other as int8 rows
    rounded after training."""
    if "embeddings" not in targets:
        return {}
    return {path: m.export() if isinstance(m, FakeTernaryEmbedding) else QuantizedEmbedding.from_embedding(m)
            for path, m in prunable_modules(model, ["embeddings"]) if isinstance(m, nn.Embedding)}


def quantization_metrics(model: nn.Module) -> dict[str, float]:
    """``compress/*`` of an exported model: how many Linears are integer (or binary), their weight bytes against
    fp32."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear | BinaryLinear)]
    tables = [m for m in model.modules() if isinstance(m, QuantizedEmbedding)]
    counts = {"compress/quantized_embeddings": float(len(tables)),
              "compress/ternary_embeddings": float(sum(t.bits == 2 for t in tables))}
    if not layers:
        return {"compress/quantized_layers": 0.0, **counts}
    stored = sum(m.stored_bytes() for m in layers)
    fp32 = sum(4 * m.num_weights for m in layers)
    return {
        "compress/quantized_layers": float(len(layers)),
        **counts,
        "compress/weight_bits": float(layers[0].bits),
        "compress/quantized_weight_bytes": float(stored),
        "compress/quantized_weight_fp32_bytes": float(fp32),
        "compress/quantized_weight_compression": fp32 / stored,
    }


def check_group_size(models: ModelConfigs, granularity: str, group_size: Any) -> None:
    """Group-wise scales need a group size dividing every quantized Linear's input width."""
    if granularity != "group":
        return
    widths = {"student.hidden_size": models.student.hidden_size,
              "student.intermediate_size": getattr(models.student, "intermediate_size", models.student.hidden_size)}
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
        raise ConfigError("technique.group_size", group_size, "an integer >= 2 dividing the Linears' input widths")
    for key, width in widths.items():
        if width % group_size:
            raise ConfigError("technique.group_size", group_size, f"a divisor of {key} = {width}")


class DataFreeQuantization(Technique):
    exports_quantized = True
    """Post-training quantization that reads no data (``trains=False``; the calibration batches go unused):
    subclasses say what replaces each target Linear (``replacement``); ``targets`` and the int8 embedding tables
    are handled here."""

    targets: tuple[str, ...] = ("encoder",)

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(trains=False)

    def replacement(self, linear: nn.Linear) -> nn.Module:
        raise NotImplementedError

    @torch.no_grad()
    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        linears = target_linears(self.student, self.targets)
        self.student.cpu()  # the int8 kernels are CPU kernels
        coded = {path: self.replacement(m) for path, m in linears}
        tables = quantized_embeddings(self.student, self.targets)
        replace_all(self.student, coded | tables)
        log.info("%s: %d Linears and %d embedding tables quantized", type(self).__name__, len(coded), len(tables))
        return {}

    def compression_metrics(self) -> dict[str, float]:
        return quantization_metrics(self.student)


class DistilledQuantization(Technique):
    exports_quantized = True
    """Quantization-aware training with an optional TernaryBERT-style distillation loss (module docstring)."""

    def __init__(self, distill: bool = True, alpha: float = 0.0, temperature: float = 1.0,
                 intermediate_weight: float = 1.0, **base: Any) -> None:
        super().__init__(**base)
        type(self).validate_hparams(**self.hparams)
        self.distill, self.alpha, self.temperature = distill, alpha, temperature
        self.intermediate_weight = intermediate_weight

    @classmethod
    def validate_hparams(cls, distill: bool, alpha: float, temperature: float, intermediate_weight: float,
                         **_: Any) -> None:
        if not isinstance(distill, bool):
            raise ConfigError("technique.distill", distill, "true (learn from the fp32 teacher) or false")
        check_kd_weights(alpha, temperature)
        if not isinstance(intermediate_weight, int | float) or intermediate_weight < 0:
            raise ConfigError("technique.intermediate_weight", intermediate_weight, "a weight >= 0")

    @classmethod
    def _intermediate(cls, distill: bool = True, intermediate_weight: float = 1.0, **_: Any) -> bool:
        return bool(distill and intermediate_weight > 0)

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        distill, intermediate = hparams.get("distill", True), cls._intermediate(**hparams)
        return Requirements(teacher=distill, hidden_states=intermediate,
                            cacheable_teacher_logits=distill and not intermediate)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        if cls._intermediate(**hparams) and models.teacher is not None:
            why = "the hidden-state and attention losses compare the quantized student with its fp32 teacher layer by layer"
            for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
                models.require_same(key, why)

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not self.distill:
            logits = self(batch)
            ce = F.cross_entropy(logits, batch["labels"])
            return {"loss": ce, "loss/ce": ce}
        if not self._intermediate(self.distill, self.intermediate_weight):
            logits_S, logits_T = self(batch), self.teacher_logits(batch)
            return self._prediction_loss(logits_S, logits_T, batch["labels"])
        with capture_qkv(self.student) as qkv_S:
            out_S = self.student_outputs(batch)
        with capture_qkv(self.teacher) as qkv_T:
            out_T = self.teacher_outputs(batch)
        losses = self._prediction_loss(out_S.logits, out_T.logits, batch["labels"])
        hidden = sum(hidden_mse(h_S, h_T) for h_S, h_T in zip(out_S.hidden_states, out_T.hidden_states))
        attn = out_S.logits.new_zeros(())
        for layer in sorted(qkv_S):
            scores_S = attention_scores(qkv_S[layer].query, qkv_S[layer].key)
            scores_T = attention_scores(qkv_T[layer].query, qkv_T[layer].key)
            attn = attn + attention_mse(scores_S, scores_T, batch["attention_mask"])
        losses["loss"] = losses["loss"] + self.intermediate_weight * (hidden + attn)
        return {**losses, "loss/hidden": hidden, "loss/attn": attn}

    def _prediction_loss(self, logits_S: Tensor, logits_T: Tensor, labels: Tensor) -> dict[str, Tensor]:
        pred = soft_cross_entropy(logits_S, logits_T, self.temperature)
        if self.alpha == 0:
            return {"loss": pred, "loss/pred": pred}
        ce = F.cross_entropy(logits_S, labels)
        return {"loss": self.alpha * ce + (1.0 - self.alpha) * pred, "loss/pred": pred, "loss/ce": ce}

    def compression_metrics(self) -> dict[str, float]:
        return quantization_metrics(self.exported) if getattr(self, "exported", None) is not None else {}


def replace_all(model: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    for path, module in replacements.items():
        replace_module(model, path, module)
    return model

