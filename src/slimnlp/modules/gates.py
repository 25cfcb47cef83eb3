"""Gates on whole attention heads and FFN units: the masked form of structured pruning.

A gate multiplies the input of a layer's attention output projection (the heads' outputs side by side, one
``head_size`` block per head) or of its FFN's second Linear (one activation per unit). Gate 0 computes exactly
what the model with that head or unit removed computes, so ``materialize`` can cut the gated parts out
(``slimnlp.models.surgery``) without changing a prediction; gradients of the loss with respect to the gates
are Michel et al.'s (2019) head importance (their ``head_mask``; transformers 5 has no ``head_mask`` input, so
the gate is a forward pre-hook instead). The gates live outside the student (a module of their own, kept in
the technique's checkpoints), so the student's state dict and artifact never see them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from slimnlp.models import structure, surgery


class HeadAndUnitGates(nn.Module):
    """``heads[layer, head]`` and ``units[layer, unit]`` gates (1 kept, 0 pruned) for every encoder layer."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        layers = structure.num_layers(model)
        self.head_size = structure.head_size(model)
        self.register_buffer("heads", torch.ones(layers, structure.num_attention_heads(model)))
        self.register_buffer("units", torch.ones(layers, structure.intermediate_size(model)))
        self._handles: list[RemovableHandle] = []

    def attach(self, model: PreTrainedModel) -> None:
        """Gate ``model``'s heads and units from now on (forward pre-hooks; ``detach`` removes them)."""
        self.detach()
        parts = structure.layer_parts(model)
        for i, block in enumerate(structure.encoder_layers(model)):
            self._handles.append(block.get_submodule(parts.attention_out).register_forward_pre_hook(
                lambda _, args, i=i: (args[0] * self.heads[i].repeat_interleave(self.head_size).to(args[0].dtype),
                                      *args[1:])))
            self._handles.append(block.get_submodule(parts.ffn_out).register_forward_pre_hook(
                lambda _, args, i=i: (args[0] * self.units[i].to(args[0].dtype), *args[1:])))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def kept(self) -> dict[str, float]:
        """Heads and units kept, as counts."""
        return {"heads": float(self.heads.sum()), "units": float(self.units.sum())}

    def materialize(self, model: PreTrainedModel) -> PreTrainedModel:
        """Remove the gates and cut the gated-off heads and units out of ``model`` (in place). Gates must be
        0 or 1: a fractional gate is a scaled head, which slicing cannot express."""
        for name, gates in (("heads", self.heads), ("units", self.units)):
            if not bool(((gates == 0) | (gates == 1)).all()):
                raise ValueError(f"{name} gates must be 0 or 1 to materialize")
        self.detach()
        for layer in range(structure.num_layers(model)):
            surgery.prune_heads(model, layer, self._off(self.heads[layer]))
            surgery.prune_ffn_units(model, layer, self._off(self.units[layer]))
        surgery.sync_config(model)
        return model

    @staticmethod
    def _off(gates: Tensor) -> list[int]:
        return (gates == 0).nonzero().flatten().tolist()
