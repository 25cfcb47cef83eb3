"""Structured pruning to a measured speed-up: ``technique.target_speedup=2.0`` instead of a sparsity number.

The idea is ZipLM's (Kurtic, Frantar & Alistarh 2023, "ZipLM: Inference-Aware Structured Pruning of Language
Models"): time every layer's attention at every head count and its FFN at every width on the machine the
model will run on (``slimnlp.models.latency_table``), then choose how many heads and FFN units *each layer*
keeps so that the predicted latency meets the target while the least importance is removed — a
multiple-choice knapsack over the layers, solved exactly by dynamic programming on a discretised time budget
(ZipLM and its predecessor SPDY do the same). The target is reached gradually: ``rounds`` rounds at speed-ups
``target^(r/rounds)``, the importance re-measured on the pruned model before each, a layer never growing back.
Then the table's prediction is checked against the clock: the gated model is materialized into a copy and
timed against the dense one, and while the measured speed-up falls short (the table's additive model misses
effects between layers) the knapsack is solved again for a target raised by the shortfall, at most
``max_corrections`` times. The pruned student is then fine-tuned (with the teacher's soft loss when
``distill``) with the gates fixed and materialized by slicing, as in ``head_pruning``; the measurement suite
measures the saved model again (``eff/speedup_b32``), reported next to the target, the table's prediction
(``compress/predicted_speedup``) and the check's figure (``compress/measured_speedup``).

Deviations from ZipLM, each deliberate (the authors' repository, IST-DASLab/ZipLM, holds only a README, so
the paper is the reference):

- Importance is the empirical Fisher information of the head and unit gates, ``Σ_batches (∂L/∂gate)²``
  over training batches of ``data.batch_size`` — the diagonal estimate of the loss increase of removing a set of them that Kwon et
  al. 2022 ("A Fast Post-Training Pruning Framework for Transformers", whose released code also ranks heads
  and FFN neurons on one scale under a latency lookup table) use — not ZipLM's second-order (OBS)
  layer-wise reconstruction error, and the kept weights are not updated in closed form; fine-tuning (with
  KD) recovers instead. Heads and units are compared on that one scale, so the raw importances are summed,
  not normalised per layer as Michel et al. do for ranking heads alone; the first-order ``|∂L/∂gate|`` that
  ``head_pruning`` ranks by is not used here because its per-structure absolute values add up unevenly
  across granularities (a head's gradient cancels over its dimensions before the absolute value, a unit's
  does not), which in a trial run kept one head in five of six layers.
- One pruning pass at ``prune_at`` (in rounds) then fine-tuning, not ZipLM's gradual prune-then-train cycles
  over a ladder of targets; a user can chain runs with ``student.init_from`` for that.
- Every layer keeps at least one head and one FFN unit (``slimnlp.models.surgery`` cannot remove a whole
  attention block); ZipLM may drop a module entirely.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.models.latency_table import LatencyTable, measure_latency_table, measured_speedup
from slimnlp.modules.gates import HeadAndUnitGates
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.head_pruning import HeadPruning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    """Keeping ``width`` heads or units of one layer: ``saving_ms`` of latency for ``removed`` importance."""

    width: int
    saving_ms: float
    removed: float


def choose_widths(options: list[list[Option]], required_ms: float, bins: int = 2000) -> list[int] | None:
    """The option index per component that saves at least ``required_ms`` with the least importance removed
    (``None`` when even the cheapest options of all components save less).

    Exact dynamic programming over savings discretised into ``bins`` steps of ``required_ms / bins``; each
    option's saving is rounded *down*, so a returned choice always meets ``required_ms``."""
    if required_ms <= 0:  # nothing to save: keep what removes the least importance (the widest)
        return [min(range(len(opts)), key=lambda j: (opts[j].removed, -opts[j].width)) for opts in options]
    step = required_ms / bins
    cost = [0.0] + [math.inf] * bins  # cost[b]: least importance removed for savings ≥ b·step (b = bins: ≥ all)
    came_from: list[list[tuple[int, int]]] = []  # per component: (previous bin, option) that reached each bin
    for opts in options:
        new, back = [math.inf] * (bins + 1), [(-1, -1)] * (bins + 1)
        for b, c in enumerate(cost):
            if math.isinf(c):
                continue
            for j, opt in enumerate(opts):
                to = min(bins, b + int(opt.saving_ms // step))
                if c + opt.removed < new[to]:
                    new[to], back[to] = c + opt.removed, (b, j)
        came_from.append(back)
        cost = new
    if math.isinf(cost[bins]):
        return None
    chosen, b = [], bins
    for back in reversed(came_from):
        b, j = back[b]
        chosen.append(j)
    return chosen[::-1]


def _lowest_on(importance: Tensor, gates: Tensor) -> list[int]:
    """Indices of the gates still on, least important first."""
    on = gates.nonzero().flatten()
    return on[importance[on].argsort(stable=True)].tolist()


def layer_options(importance: Tensor, gates: Tensor, widths: list[int], savings: list[float]) -> list[Option]:
    """One layer's options: every width of the table up to what the layer keeps now (a layer never grows
    back), each removing the least important of its remaining heads or units."""
    order = _lowest_on(importance, gates)
    removed_prefix = [0.0, *torch.cumsum(importance[order], 0).tolist()] if order else [0.0]
    return [Option(w, s, removed_prefix[len(order) - w]) for w, s in zip(widths, savings) if w <= len(order)]


class LatencyTargetPruning(HeadPruning):
    """Heads and FFN units per layer chosen from a measured latency table to meet ``target_speedup``."""

    def __init__(
        self,
        target_speedup: float = 2.0,
        rounds: int = 4,
        ffn_levels: int = 16,
        latency_batch_size: int = 32,
        latency_threads: int | None = 2,
        latency_repeats: int = 10,
        max_corrections: int = 3,
        importance_examples: int = 512,
        prune_at: float = 0.0,
        **base: Any,
    ) -> None:
        super().__init__(head_sparsity=0.0, ffn_sparsity=0.0, importance_examples=importance_examples,
                         prune_at=prune_at, **base)
        self.target_speedup, self.rounds, self.ffn_levels = float(target_speedup), rounds, ffn_levels
        self.latency_batch_size, self.latency_threads, self.latency_repeats = (
            latency_batch_size, latency_threads, latency_repeats)
        self.max_corrections = max_corrections
        self.register_buffer("predicted_speedup", torch.tensor(1.0))  # checkpointed with ``pruned``
        self.register_buffer("measured_speedup", torch.tensor(1.0))

    @classmethod
    def validate_hparams(
        cls, target_speedup: float, rounds: int, ffn_levels: int, latency_batch_size: int,
        latency_threads: int | None, latency_repeats: int, max_corrections: int, **rest: Any,
    ) -> None:
        if not isinstance(target_speedup, int | float) or isinstance(target_speedup, bool) or target_speedup <= 1.0:
            raise ConfigError("technique.target_speedup", target_speedup, "a speed-up factor > 1 (e.g. 2.0)")
        for key, value in (("rounds", rounds), ("ffn_levels", ffn_levels),
                           ("latency_batch_size", latency_batch_size), ("latency_repeats", latency_repeats)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"technique.{key}", value, "a positive integer")
        if not isinstance(max_corrections, int) or isinstance(max_corrections, bool) or max_corrections < 0:
            raise ConfigError("technique.max_corrections", max_corrections, "a non-negative integer")
        if latency_threads is not None and (not isinstance(latency_threads, int) or latency_threads < 1):
            raise ConfigError("technique.latency_threads", latency_threads, "a positive integer or null")
        rest.update(head_sparsity=0.0, ffn_sparsity=0.0, round_fraction=1.0)  # the table decides, not counts
        super().validate_hparams(**rest)

    @classmethod
    def check_models(cls, models: ModelConfigs, **_: Any) -> None:
        structure.check_heads_removable(models.student, "student.model_type")

    # ------------------------------------------------------------------ pruning
    def dense_copy(self) -> torch.nn.Module:
        """The student without its gates' hooks, on the CPU (where the suite times it)."""
        self.gates.detach()
        try:
            return copy.deepcopy(self.student).cpu()
        finally:
            self.gates.attach(self.student)

    def timing_batch(self) -> dict[str, Tensor]:
        """The suite's input shape (``data.max_length``), from training examples."""
        return self.trainer.datamodule.fixed_length_batch(self.latency_batch_size, split="train")

    def latency_table(self) -> LatencyTable:
        return measure_latency_table(self.dense_copy(), self.timing_batch(), self.ffn_levels, self.latency_repeats,
                                     threads=self.latency_threads)

    def clock_speedup(self) -> float:
        """The dense student's latency over that of the gated one materialized (both copies, timed now)."""
        dense = self.dense_copy()
        gates = HeadAndUnitGates(dense)
        gates.heads.copy_(self.gates.heads)
        gates.units.copy_(self.gates.units)
        sliced = gates.materialize(copy.deepcopy(dense))
        return measured_speedup(dense, sliced, self.timing_batch(), 2 * self.latency_repeats,
                                threads=self.latency_threads)

    def prune(self, batches: Iterable[Mapping[str, Tensor]]) -> int:
        table = self.latency_table()
        log.info("latency table (batch %d, %s threads): dense %.1f ms; one layer saves %s ms at heads %s and "
                 "%s ms at FFN widths %s", self.latency_batch_size, self.latency_threads, table.dense_ms,
                 [round(s, 1) for s in table.head_saving_ms], table.head_widths,
                 [round(s, 1) for s in table.ffn_saving_ms], table.ffn_widths)
        for r in range(1, self.rounds + 1):
            importance = self.gate_gradients(batches, power=2)
            self.prune_to(table, self.target_speedup ** (r / self.rounds), importance)
        goal = self.target_speedup
        for correction in range(self.max_corrections + 1):
            self.measured_speedup.fill_(self.clock_speedup())
            log.info("latency pruning: %.2fx measured against the dense student (%.2fx predicted)",
                     float(self.measured_speedup), float(self.predicted_speedup))
            if float(self.measured_speedup) >= self.target_speedup or correction == self.max_corrections:
                break
            goal *= self.target_speedup / float(self.measured_speedup)
            try:
                self.prune_to(table, goal, importance)
            except ConfigError:
                break
        if float(self.measured_speedup) < self.target_speedup:
            log.warning("latency pruning: %.2fx measured, short of technique.target_speedup=%s after %d "
                        "corrections", float(self.measured_speedup), self.target_speedup, correction)
        self.pruned.fill_(True)
        return self.rounds

    def prune_to(self, table: LatencyTable, speedup: float, importance: tuple[Tensor, Tensor]) -> None:
        """Gate the least important heads and units so the table predicts ``speedup``."""
        heads, units = importance
        components = [(self.gates.heads, heads, table.head_widths, table.head_saving_ms),
                      (self.gates.units, units, table.ffn_widths, table.ffn_saving_ms)]
        options = [layer_options(imp[layer], gates[layer], widths, savings)
                   for gates, imp, widths, savings in components for layer in range(gates.shape[0])]
        required = table.dense_ms * (1.0 - 1.0 / speedup)
        chosen = choose_widths(options, required)
        if chosen is None:
            most = table.dense_ms / (table.dense_ms - sum(opts[0].saving_ms for opts in options))
            raise ConfigError("technique.target_speedup", self.target_speedup,
                              f"at most {most:.2f}x by this machine's latency table (every layer keeps one head "
                              f"and {table.ffn_widths[0]} FFN units)")
        widths = [opts[j].width for opts, j in zip(options, chosen)]
        layers = self.gates.heads.shape[0]
        for i, (gates, imp, *_), in enumerate(components):
            for layer in range(layers):
                order = _lowest_on(imp[layer], gates[layer])
                gates[layer, order[: len(order) - widths[i * layers + layer]]] = 0.0
        predicted = table.predicted_ms(widths[:layers], widths[layers:])
        self.predicted_speedup.fill_(table.dense_ms / predicted)
        log.info("latency pruning to %.2fx: heads per layer %s, FFN units per layer %s (predicted %.2fx)",
                 speedup, widths[:layers], widths[layers:], float(self.predicted_speedup))

    def compression_metrics(self) -> dict[str, float]:
        return {**super().compression_metrics(), "compress/target_speedup": self.target_speedup,
                "compress/predicted_speedup": float(self.predicted_speedup),
                "compress/measured_speedup": float(self.measured_speedup)}
