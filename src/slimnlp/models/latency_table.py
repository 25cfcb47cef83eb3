"""Measured latency of an encoder layer's attention and FFN at every width they can be pruned to.

ZipLM (Kurtic et al. 2023, "ZipLM: Inference-Aware Structured Pruning of Language Models") chooses how much
of each layer to keep from a table of *measured* timings per structure count on the target machine, not from
parameter or FLOP counts: on a CPU, a layer with half its heads is rarely twice as fast (fixed per-op costs,
GEMM shapes that tile badly). This module builds that table for one model on this machine.

How. One copy of the model cut to its first encoder layer is sliced to ``k`` heads (FFN whole) for every
``k`` in ``1..H`` and to ``f`` FFN units (heads whole) for every ``f`` on a grid; every copy and the whole dense
model are timed in interleaved rounds (``slimnlp.metrics.latency``) on the same fixed-length batch the
measurement suite times. A layer's saving at width ``k`` is ``T₁(H, F) − T₁(k, F)`` (the one-layer model's time
difference), likewise for FFN widths; savings are made monotone (keeping fewer never costs more: a smaller
measured saving than a narrower width's is measurement noise) and bounded twice: by what a layer costs (the
one-layer model's time minus that of the model with no layer: a layer cannot save more than it takes) and, all
layers together, by the dense time minus that of the model with no layer (embeddings and head are never
pruned) — without the second bound, timing noise on a loaded machine let a table promise a 50x speed-up of a
4-layer model. A model's predicted latency is the dense time minus the savings of its layers — attention and FFN costs taken
as additive, as in ZipLM's table.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor
from transformers import PreTrainedModel

from slimnlp.batch import model_inputs
from slimnlp.metrics.latency import inference_call, interleaved_times_ms, torch_threads
from slimnlp.models import structure, surgery


@dataclass(frozen=True)
class LatencyTable:
    """Per-layer savings (ms per forward pass of the timed batch) at each width, against the dense time."""

    dense_ms: float  # the whole dense model
    layer_ms: float  # what one dense layer costs: the bound on its attention's and FFN's savings together
    head_widths: list[int]  # 1..H
    head_saving_ms: list[float]  # saving of one layer kept at that many heads (0 at H)
    ffn_widths: list[int]  # the grid, ascending, ending at F
    ffn_saving_ms: list[float]  # saving of one layer's FFN kept at that width (0 at F)

    def predicted_ms(self, heads_per_layer: list[int], ffn_per_layer: list[int]) -> float:
        """Latency predicted for a model with these widths per layer (each must be a width of the table)."""
        heads = dict(zip(self.head_widths, self.head_saving_ms))
        ffn = dict(zip(self.ffn_widths, self.ffn_saving_ms))
        return self.dense_ms - sum(heads[k] for k in heads_per_layer) - sum(ffn[f] for f in ffn_per_layer)


def ffn_grid(width: int, levels: int) -> list[int]:
    """``levels`` FFN widths from ``width/levels`` to ``width``, evenly spaced (rounded, distinct, ≥ 1)."""
    return sorted({max(1, round(width * j / levels)) for j in range(1, levels + 1)})


def monotone_savings(savings: list[float]) -> list[float]:
    """Savings ordered by ascending width made non-increasing and ≥ 0: a narrower layer saves at least as
    much as a wider one (the measured opposite is noise)."""
    out = [max(0.0, s) for s in savings]
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1])
    out[-1] = 0.0  # the full width saves nothing by definition
    return out


def savings_scale(most_per_layer_ms: float, layer_ms: float, layers: int, prunable_ms: float) -> float:
    """The factor (≤ 1) that scales measured savings into what is physically possible: one layer saves at most
    what it costs (``layer_ms``), and ``layers`` layers together save at most ``prunable_ms``, the dense time
    less that of the parts never pruned. A larger measured saving is timing noise."""
    bound = min(layer_ms, max(prunable_ms, 0.0) / max(layers, 1))
    return 1.0 if most_per_layer_ms <= bound else bound / most_per_layer_ms


def _one_layer(model: PreTrainedModel) -> PreTrainedModel:
    probe = copy.deepcopy(model).eval()
    surgery.keep_layers(probe, [0])
    return probe


def _sliced(probe: PreTrainedModel, heads: int, units: int) -> PreTrainedModel:
    sliced = copy.deepcopy(probe)
    surgery.prune_heads(sliced, 0, list(range(heads, surgery.num_heads(probe, 0))))
    surgery.prune_ffn_units(sliced, 0, list(range(units, surgery.ffn_width(probe, 0))))
    surgery.sync_config(sliced)
    return sliced


def measure_latency_table(
    model: PreTrainedModel,
    batch: Mapping[str, Tensor],
    ffn_levels: int = 16,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
) -> LatencyTable:
    """Time ``model`` (dense, without hooks: pass a clean copy) and its one-layer slices on ``batch``."""
    heads, width = structure.num_attention_heads(model), structure.intermediate_size(model)
    head_widths, ffn_widths = list(range(1, heads + 1)), ffn_grid(width, ffn_levels)
    probe = _one_layer(model)
    no_layer = copy.deepcopy(probe)
    surgery.keep_layers(no_layer, [])
    variants = {"layer": probe, "no_layer": no_layer}  # one layer at full width: what savings are measured from
    variants.update({f"heads:{k}": _sliced(probe, k, width) for k in head_widths[:-1]})
    variants.update({f"ffn:{f}": _sliced(probe, heads, f) for f in ffn_widths[:-1]})
    median = median_ms({"dense": model, **variants}, batch, repeats, warmup, threads)
    median[f"heads:{heads}"] = median[f"ffn:{width}"] = median["layer"]
    layer_ms = max(median["layer"] - median["no_layer"], 0.0)
    head_saving = monotone_savings([median["layer"] - median[f"heads:{k}"] for k in head_widths])
    ffn_saving = monotone_savings([median["layer"] - median[f"ffn:{f}"] for f in ffn_widths])
    scale = savings_scale(head_saving[0] + ffn_saving[0], layer_ms, structure.num_layers(model),
                          prunable_ms=median["dense"] - median["no_layer"])
    return LatencyTable(
        dense_ms=median["dense"],
        layer_ms=layer_ms,
        head_widths=head_widths,
        head_saving_ms=[s * scale for s in head_saving],
        ffn_widths=ffn_widths,
        ffn_saving_ms=[s * scale for s in ffn_saving],
    )


def measured_speedup(
    reference: PreTrainedModel,
    model: PreTrainedModel,
    batch: Mapping[str, Tensor],
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
) -> float:
    """``reference``'s median latency over ``model``'s on ``batch``, the two timed in interleaved rounds."""
    median = median_ms({"reference": reference, "model": model}, batch, repeats, warmup, threads)
    return median["reference"] / median["model"]


def median_ms(
    models: Mapping[str, PreTrainedModel],
    batch: Mapping[str, Tensor],
    repeats: int,
    warmup: int,
    threads: int | None,
) -> dict[str, float]:
    """Median milliseconds of each model's forward pass on ``batch`` (eval mode), timed in interleaved rounds."""
    inputs = model_inputs(batch)
    with torch_threads(threads):
        times = interleaved_times_ms({name: inference_call(m.eval(), inputs) for name, m in models.items()},
                                     repeats=repeats, warmup=warmup)
    return {name: float(np.median(t)) for name, t in times.items()}
