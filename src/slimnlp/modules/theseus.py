"""Module replacing for BERT-of-Theseus (Xu et al. 2020, "BERT-of-Theseus: Compressing BERT by Progressive
Module Replacing"), as plain torch.

The predecessor's ``L_T`` encoder layers are cut into ``L_S`` consecutive blocks of ``k = L_T / L_S``
layers ("predecessor modules"); successor module ``i`` is one compact layer that may stand in for block
``i``. Each training step draws ``r_i ~ Bernoulli(p)`` per successor and runs the compound encoder
``[scc_i if r_i else prd_i for i]``; at inference only successors run.

The compound is built by lending a layer list to the model for one forward pass (``structure.lent_layers``:
HF encoders iterate their ``ModuleList`` in ``forward``), so the model is a plain HF model before and after:
checkpoints and ``save_pretrained`` only ever see the successor layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
