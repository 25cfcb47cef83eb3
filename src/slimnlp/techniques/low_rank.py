"""What the low-rank techniques share: which Linears are factorized, the rank each gets, the two stages
(factorize, then recover), and the ``compress/*`` figures of the factorized model.

A ``d_out × d_in`` Linear becomes ``FactorizedLinear`` (``B·A``, rank ``r``; ``slimnlp.modules.factorized``), which
pays only while ``r·(d_in + d_out) < d_in·d_out``: a rank at or above that break-even keeps the layer dense, so
``compress/factorized_layers`` says how many layers really changed. The rank is one of ``rank`` (the same for
every layer), ``rank_ratio`` (a fraction of each layer's full rank ``min(d_in, d_out)``) or ``energy`` (per
layer, the smallest rank keeping that share of the squared singular values of the matrix being approximated).

The run is two stages (``stages()``): ``factorize``, post-training (``trains=False``, so the runner validates
the factorized model before any recovery: its ``val/*`` is recorded in the stage's ``done.json``), then
``recover`` (Noach & Goldberg 2020 fine-tune after the decomposition): ``kd`` — ``α·CE + (1−α)·τ²·KL`` with the
fine-tuned teacher (Hinton et al. 2015) — or ``finetune`` (CE); ``recover=none`` stops after the factorization.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from slimnlp.errors import ConfigError
from slimnlp.models.structure import prunable_modules
from slimnlp.models.surgery import replace_module
from slimnlp.modules.factorized import FactorizedLinear, Spectrum, weight_spectrum
from slimnlp.techniques.base import ModelConfigs, Requirements, Stage, Technique
from slimnlp.techniques.kd import check_kd_weights, kd_or_ce

log = logging.getLogger(__name__)
FACTORIZABLE_PARTS = ("encoder", "pooler")
RECOVERY = ("kd", "finetune", "none")
PHASES = ("both", "factorize", "recover")  # the user's is both; the stages set the other two


def check_rank_choice(rank: Any, rank_ratio: Any, energy: Any) -> None:
    given = {k: v for k, v in (("rank", rank), ("rank_ratio", rank_ratio), ("energy", energy)) if v is not None}
    if len(given) != 1:
        raise ConfigError("technique.rank/rank_ratio/energy", given or None, "exactly one of the three set, the "
                          "others null")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise ConfigError("technique.rank", rank, "an integer >= 1")
    for key, value in (("rank_ratio", rank_ratio), ("energy", energy)):
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1):
            raise ConfigError(f"technique.{key}", value, "a fraction in (0, 1]")


def pays(rank: int, linear: nn.Linear) -> bool:
    """Whether rank ``rank`` stores fewer weights than the dense matrix."""
    return rank * (linear.in_features + linear.out_features) < linear.in_features * linear.out_features


class FactorizeThenRecover(Technique):
    """The two stages and the rank rule every low-rank technique shares; subclasses say what ``compress``
    factorizes."""

    def __init__(self, rank: int | None = None, rank_ratio: float | None = None, energy: float | None = None,
                 recover: str = "kd", recover_epochs: int | None = None, alpha: float = 0.5, temperature: float = 2.0,
                 phase: str = "both", **base: Any) -> None:
        super().__init__(**base)
        type(self).validate_hparams(**self.hparams)
        if phase == "both":
            raise ConfigError("technique.phase", phase, "factorize or recover when built directly; the runner runs "
                              "the stages of stages()")
        self.rank, self.rank_ratio, self.energy = rank, rank_ratio, energy
        self.recover, self.phase = recover, phase
        self.alpha, self.temperature = alpha, temperature

    # ------------------------------------------------------------ config
    @classmethod
    def validate_hparams(cls, rank: Any, rank_ratio: Any, energy: Any, recover: str, recover_epochs: Any,
                         alpha: float, temperature: float, phase: str, **_: Any) -> None:
        check_rank_choice(rank, rank_ratio, energy)
        if recover not in RECOVERY:
            raise ConfigError("technique.recover", recover, f"one of {list(RECOVERY)}")
        if recover_epochs is not None and (not isinstance(recover_epochs, int) or isinstance(recover_epochs, bool)
                                           or recover_epochs < 1):
            raise ConfigError("technique.recover_epochs", recover_epochs, "null (trainer.max_epochs) or an integer >= 1")
        check_kd_weights(alpha, temperature)
        if phase not in PHASES:
            raise ConfigError("technique.phase", phase, f"one of {list(PHASES)}")

    @classmethod
    def requirements(cls, phase: str = "both", recover: str = "kd", **_: Any) -> Requirements:
        factorize = Requirements(trains=False)
        recovery = Requirements(teacher=recover == "kd", cacheable_teacher_logits=recover == "kd")
        if phase == "factorize" or recover == "none":
            return factorize
        return recovery if phase == "recover" else Requirements.union([factorize, recovery])

    @classmethod
    def stages(cls, phase: str = "both", recover: str = "kd", recover_epochs: int | None = None,
               **_: Any) -> list[Stage]:
        if phase != "both":
            raise ConfigError("technique.phase", phase, "both (the stages set factorize and recover themselves)")
        factorize = Stage("factorize", {"phase": "factorize"})
        return [factorize] if recover == "none" else [factorize, Stage("recover", {"phase": "recover"}, recover_epochs)]

    def rank_of(self, spectrum: Spectrum) -> int:
        if self.rank is not None:
            return min(self.rank, spectrum.full_rank)
        if self.rank_ratio is not None:
            return max(1, round(self.rank_ratio * spectrum.full_rank))
        return spectrum.rank_for_energy(self.energy)

    # ------------------------------------------------------------ recover
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        teacher = self.teacher_logits(batch) if self.recover == "kd" else None
        return kd_or_ce(self(batch), batch["labels"], teacher, self.alpha, self.temperature)


class LowRankFactorization(FactorizeThenRecover):
    """Factorize the target Linears (``spectra`` says on which matrix each rank is chosen; plain SVD here),
    then recover (module docstring)."""

    def __init__(self, targets: Sequence[str] = ("encoder",), **base: Any) -> None:
        super().__init__(**base)
        self.targets = tuple(targets)

    @classmethod
    def validate_hparams(cls, targets: Sequence[str], **rest: Any) -> None:
        if not targets or any(t not in FACTORIZABLE_PARTS for t in targets):
            raise ConfigError("technique.targets", list(targets), f"a non-empty subset of {list(FACTORIZABLE_PARTS)}")
        super().validate_hparams(**rest)

    @classmethod
    def check_models(cls, models: ModelConfigs, rank: int | None = None, **_: Any) -> None:
        full = min(models.student.hidden_size, getattr(models.student, "intermediate_size", models.student.hidden_size))
        if rank is not None and rank > full:
            raise ConfigError("technique.rank", rank, f"at most {full}, the full rank of the student's smallest "
                              "target Linear (min of student.hidden_size and student.intermediate_size)")

    # ------------------------------------------------------------ factorize
    def target_linears(self) -> list[tuple[str, nn.Linear]]:
        if any(isinstance(m, FactorizedLinear) for m in self.student.modules()):
            raise ConfigError("student", "factorized", "a student without factorized Linears (factorize the dense "
                              "model it came from)")
        return [(p, m) for p, m in prunable_modules(self.student, self.targets) if isinstance(m, nn.Linear)]

    def spectra(self, linears: list[tuple[str, nn.Linear]],
                calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, Spectrum]:
        """The matrix each layer's rank is chosen on and factorized from. Plain SVD: the weight itself."""
        return {path: weight_spectrum(linear.weight) for path, linear in linears}

    @torch.no_grad()
    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        linears = self.target_linears()
        spectra = self.spectra(linears, calibration)
        kept_dense = 0
        for path, linear in linears:
            rank = self.rank_of(spectra[path])
            if not pays(rank, linear):
                kept_dense += 1
                continue
            replace_module(self.student, path, FactorizedLinear.from_factors(*spectra[path].factors(rank), linear.bias))
        log.info("%s: %d of %d Linears factorized (%d kept dense: their rank saves nothing)", type(self).__name__,
                 len(linears) - kept_dense, len(linears), kept_dense)
        return {}

    def compression_metrics(self) -> dict[str, float]:
        layers = [m for m in self.student.modules() if isinstance(m, FactorizedLinear)]
        if not layers:
            return {"compress/factorized_layers": 0.0}
        factored = sum(m.rank * (m.in_features + m.out_features) for m in layers)
        dense = sum(m.in_features * m.out_features for m in layers)
        return {
            "compress/factorized_layers": float(len(layers)),
            "compress/mean_rank": sum(m.rank for m in layers) / len(layers),
            "compress/factorized_weight_fraction": factored / dense,  # weights kept in the factorized layers
        }
