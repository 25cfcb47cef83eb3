"""Module replacing for BERT-of-Theseus (Xu et al. 2020, "BERT-of-Theseus: Compressing BERT by Progressive
Module Replacing"), as plain torch.

The predecessor's ``L_T`` encoder layers are cut into ``L_S`` consecutive blocks of ``k = L_T / L_S``
layers ("predecessor modules"); successor module ``i`` is one compact layer that may stand in for block
``i``. Each training step draws ``r_i ~ Bernoulli(p)`` per successor and runs the compound encoder
``[scc_i if r_i else prd_i for i]``; at inference only successors run.

The compound is built by lending a layer list to the model for one forward pass (``structure.lent_layers``:
HF encoders iterate their ``ModuleList`` in ``forward``), so the model is a plain HF model before and after:
checkpoints and ``save_pretrained`` only ever see the successor layers.

The replacement probability after ``t`` optimizer steps is the reference's (JetRunner/BERT-of-Theseus,
``bert_of_theseus/replacement_scheduler.py``; ``run_glue.py`` steps it after every ``optimizer.step()``):

- linear (``LinearReplacementScheduler``): ``p = min(1, k·t + b)``, a fixed slope ``k`` per step;
- constant (``ConstantReplacementScheduler``): ``p`` until ``steps_for_replacing`` steps, then 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

SCHEDULERS = ("linear", "constant")


@dataclass(frozen=True)
class ReplacementScheduler:
    """The replacement probability ``p(t)`` after ``t`` optimizer steps (values checked by the technique)."""

    kind: str = "linear"  # linear | constant
    rate: float = 0.3  # linear: the base rate b; constant: the rate p
    k: float = 6e-4  # linear: the slope per optimizer step
    steps_for_replacing: int = 2500  # constant: optimizer steps at p before p = 1

    def __call__(self, step: int) -> float:
        if self.kind == "linear":
            return min(1.0, self.k * step + self.rate)
        if self.kind == "constant":
            return self.rate if step < self.steps_for_replacing else 1.0
        raise ValueError(f"unknown replacement scheduler {self.kind!r}; allowed: {', '.join(SCHEDULERS)}")

    def successor_only_from(self) -> int:
        """The first step at which ``p = 1``: from there on only the successors run (successor fine-tuning)."""
        if self.rate >= 1.0:
            return 0
        if self.kind == "constant":
            return self.steps_for_replacing
        step = math.ceil((1.0 - self.rate) / self.k)  # p = 1 from here, give or take float rounding of k·t + b
        if step > 0 and self(step - 1) >= 1.0:
            return step - 1
        return step if self(step) >= 1.0 else step + 1


def sample_replacement(
    num_successors: int, rate: float, generator: torch.Generator | None = None
) -> list[bool]:
    """One Bernoulli(rate) draw per successor module: True = the successor replaces its block this step."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"replacement rate must lie in [0, 1], got {rate}")
    draws = torch.rand(num_successors, generator=generator) < rate
    return draws.tolist()


def compound_layers(
    predecessors: Sequence[nn.Module], successors: Sequence[nn.Module], replaced: Sequence[bool]
) -> nn.ModuleList:
    """The layers one compound forward runs: successor ``i`` or predecessor block ``i`` (``k`` layers)."""
    if len(replaced) != len(successors) or len(predecessors) % len(successors):
        raise ValueError(
            f"{len(predecessors)} predecessor layers, {len(successors)} successors and {len(replaced)} draws "
            "do not fit: the predecessor depth must be a multiple of the successor depth, one draw per successor"
        )
    k = len(predecessors) // len(successors)
    layers: list[nn.Module] = []
    for i, use_successor in enumerate(replaced):
        layers += [successors[i]] if use_successor else list(predecessors[i * k : (i + 1) * k])
    return nn.ModuleList(layers)
