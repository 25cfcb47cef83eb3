"""Lottery tickets by iterative magnitude pruning with rewinding (Frankle & Carbin 2019, "The Lottery Ticket
Hypothesis"; for BERT, Chen et al. 2020, "The Lottery Ticket Hypothesis for Pre-trained BERT Networks").

Each of ``rounds`` pruning rounds is a stage of its own (fresh optimizer and LR schedule, as the reference
resets both): train the masked student for ``round_epochs``, prune by global magnitude to the round's level,
then *rewind* the surviving weights to the saved state and hand the subnetwork on. The ``ticket`` stage then
fine-tunes the final subnetwork ``θ_rewind ⊙ m`` with the trainer's epochs; that is the model tested. Every
round's validation metrics and sparsity are in ``stages/round<i>/done.json`` (and the logger).

As in the authors' code (``VITA-Group/BERT-Tickets``, ``LT_glue.py``): magnitude ranking is global
(``prune.global_unstructured`` with ``L1Unstructured``) over the encoder's Linear weights and the pooler's
(``targets``' default); every round removes
the same share of the *original* weights (``amount = 1/(10 − k)`` of what remains: 10%, 20%, … there), here
``sparsity · i / rounds`` after round ``i``; the rewind restores the encoder's weights (``bert.*`` keys) and
leaves the classifier as trained; ``rewind_step=0`` rewinds to the weights the student started with (the
pre-trained ones: Chen et al.'s setting), ``rewind_step=k`` to those after ``k`` steps of the first round
(Frankle et al. 2020's "rewinding", for when rewinding to the start fails).

Deviations: the reference trains its rounds for ``save_steps`` steps, here ``round_epochs`` epochs; its loss is
plain cross-entropy, here optionally plus the teacher's soft loss (``distill``, off by default as in the paper).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.masking import FixedMask, add_mask, materialize, top_fraction, zero_fraction
from slimnlp.techniques.base import Stage
from slimnlp.techniques.pruning import DistilledPruning, check_sparsity, global_levels, masked_weights

log = logging.getLogger(__name__)
_MASKED = ".parametrizations.weight."


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(key, value, "a positive integer")


def plain_state(module: nn.Module) -> dict[str, Tensor]:
    """A copy of ``module``'s state under its plain names (a masked weight's ``original`` as ``weight``;
    masks left out), so it loads into the same module with or without masks."""
    state = {}
    for key, value in module.state_dict().items():
        if _MASKED + "original" in key:
            state[key.replace(_MASKED + "original", ".weight")] = value.detach().clone()
        elif _MASKED not in key:
            state[key] = value.detach().clone()
    return state


class LotteryTicket(DistilledPruning):
    """Iterative magnitude pruning with rewinding; one stage per round, then the ticket's fine-tuning."""

    def __init__(
        self,
        sparsity: float = 0.6,
        rounds: int = 3,
        round_epochs: int = 1,
        rewind_step: int = 0,
        round_index: int = 1,
        targets: Sequence[str] = ("encoder", "pooler"),
        distill: bool = False,
        **base: Any,
    ) -> None:
        super().__init__(distill=distill, **base)
        self.sparsity, self.rounds, self.rewind_step, self.round_index = sparsity, rounds, rewind_step, round_index
        self.targets = tuple(targets)
        self.pruned_paths: list[str] = []
        self.rewind_state: dict[str, Tensor] | None = None

    @classmethod
    def validate_hparams(
        cls, sparsity: float, rounds: int, round_epochs: int, rewind_step: int, round_index: int,
        targets: Sequence[str], **rest: Any,
    ) -> None:
        check_sparsity(sparsity)
        _positive_int("technique.rounds", rounds)
        _positive_int("technique.round_epochs", round_epochs)
        if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or rewind_step < 0:
            raise ConfigError("technique.rewind_step", rewind_step, "a step of the first round to rewind to, >= 0")
        if not isinstance(round_index, int) or not 1 <= round_index <= rounds + 1:
            raise ConfigError("technique.round_index", round_index, f"set by the stages: 1..{rounds + 1}")
        structure.check_prunable_parts(targets)
        super().validate_hparams(**rest)

    @classmethod
    def stages(cls, rounds: int = 3, round_epochs: int = 1, **_: Any) -> list[Stage]:
        # A round's mask comes from its final weights; the ticket is selected on validation (its sparsity is fixed).
        prune = [Stage(f"round{i}", {"round_index": i}, round_epochs, select_best=False) for i in range(1, rounds + 1)]
        return [*prune, Stage("ticket", {"round_index": rounds + 1})]

    @property
    def is_ticket(self) -> bool:
        return self.round_index == self.rounds + 1

    def level_after_round(self) -> float:
        """Sparsity this round prunes to: an equal share of the original weights per round (the reference)."""
        return self.sparsity * self.round_index / self.rounds

    # ------------------------------------------------------------------ masks and the rewind point
    def prepare_student(self) -> None:
        # The incoming weights: the rewind point of every round but the first at rewind_step > 0 (a subnetwork
        # handed on was already rewound; masks only shrink, so its zeros lose nothing a later rewind needs).
        if self.round_index > 1 or self.rewind_step == 0:
            self.rewind_state = plain_state(structure.backbone(self.student))
        for path, module in structure.prunable_modules(self.student, self.targets):
            add_mask(module, FixedMask(module.weight != 0 if self.round_index > 1 else torch.ones_like(module.weight)))
            self.pruned_paths.append(path)

    def masked(self) -> list[tuple[FixedMask, Tensor]]:
        return masked_weights(self.student, self.pruned_paths)

    def on_train_start(self) -> None:
        super().on_train_start()
        total = int(self.trainer.estimated_stepping_batches)
        if self.round_index == 1 and self.rewind_step >= total:
            raise ConfigError("technique.rewind_step", self.rewind_step, f"a step before the first round's end ({total})")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.round_index == 1 and self.rewind_state is None and self.global_step == self.rewind_step:
            self.rewind_state = plain_state(structure.backbone(self.student))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.round_index == 1 and self.rewind_step > 0 and self.rewind_state is not None:
            checkpoint["lottery_rewind_state"] = self.rewind_state  # taken mid-round: a resume needs it back

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "lottery_rewind_state" in checkpoint:
            self.rewind_state = checkpoint["lottery_rewind_state"]

    # ------------------------------------------------------------------ training and export
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses = self.task_loss(batch)
        losses["prune/round"] = torch.tensor(float(self.round_index))
        return losses

    @torch.no_grad()
    def export_student(self) -> PreTrainedModel:
        """The ticket: its trained weights with the zeros folded in. A round: the next, sparser mask by global
        magnitude of the trained weights, applied to the rewound ones."""
        if not self.pruned_paths:  # exported already
            return self.student
        if self.is_ticket:
            materialize(self.student)
            self.pruned_paths.clear()
            return self.student
        if self.rewind_state is None:
            raise RuntimeError("no rewind state: the first round ended before technique.rewind_step")
        masked = self.masked()
        importances = [(mask(weight) * weight).abs() for mask, weight in masked]
        levels = global_levels(importances, 1.0 - self.level_after_round())
        keep = [top_fraction(importance, level) for importance, level in zip(importances, levels)]
        paths = list(self.pruned_paths)
        materialize(self.student)
        self.pruned_paths.clear()
        structure.backbone(self.student).load_state_dict(self.rewind_state)
        for path, mask in zip(paths, keep):
            self.student.get_submodule(path).weight.mul_(mask)
        log.info("lottery ticket: round %d/%d pruned to %.1f%% and rewound", self.round_index, self.rounds,
                 100 * self.level_after_round())
        return self.student

    def compression_metrics(self) -> dict[str, float]:
        paths = [path for path, _ in structure.prunable_modules(self.student, self.targets)]
        weights = [self.student.get_submodule(path).weight for path in paths]
        target = self.sparsity if self.is_ticket else self.level_after_round()
        return {"compress/sparsity": zero_fraction(weights), "compress/target_sparsity": target,
                "compress/round": float(self.round_index)}
