"""Patient Knowledge Distillation (Sun et al. 2019, "Patient Knowledge Distillation for BERT Model Compression").

The student learns from the teacher's intermediate layers, not only its output: the normalized [CLS]
states of the first ``M−1`` student layers are pulled towards those of ``M−1`` teacher layers (the last
student layer is left to the prediction loss, as in the paper and the authors' ``NLI_KD_training.py``,
which stacks ``full_output[:-1]``). Which teacher layers:

- ``strategy=skip`` (PKD-Skip): every ``N/M``-th teacher layer — 12→6 gives teacher layers {2,4,6,8,10}
  (1-based), ``uniform_layer_map(M, N)`` without its last entry;
- ``strategy=last`` (PKD-Last): the ``M−1`` teacher layers just below the top — 12→6 gives {7,…,11}.

Objective, with slimnlp's ``alpha`` = weight of the hard-label CE (as in ``technique=kd``)::

    L = alpha·CE(z_S, y) + (1 − alpha)·τ²·KL(p_T^τ ‖ p_S^τ) + beta·L_PT
    L_PT = 1/((M−1)·d) Σ_j ‖ h_S,j/‖h_S,j‖₂ − h_T,j/‖h_T,j‖₂ ‖²₂   (batch mean)

Mapping to the paper's ``L = (1−α)·L_CE + α·L_DS + β·L_PT``: ``alpha = 1 − α_paper``. The soft loss is
the authors' ``τ²·KL`` (their code multiplies by ``T*T``) with a batch mean, where their ``KLDivLoss``
('mean') also divides by the number of classes.

``beta`` is the authors' β, on the scale it was tuned on: their ``src/KD_loss.py::patience_loss`` takes
``F.mse_loss`` over ``(batch, layers, hidden)``, the paper's sum over layers and hidden units
(``slimnlp.losses.pkd.pkd_loss``) divided by ``(M−1)·d``, which is what ``L_PT`` above is. So the grid
β ∈ {10, 100, 500, 1000} and the default 100 (their most frequent best) mean the same at every student depth
and width; a sum-form β would have to shrink as ``1/((M−1)·d)``.

The student starts from the teacher's bottom layers (``student.init=first``), the paper's initialisation
("the first k layers of the teacher"), this technique's default for students cut from the teacher.

Student and teacher must have the same width (the paper's students are BERT-3/BERT-6); for a narrower
student use ``technique=tinybert``, which learns a projection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from slimnlp.errors import ConfigError
from slimnlp.losses.kd import kd_kl
from slimnlp.losses.pkd import pkd_loss
from slimnlp.models import structure
from slimnlp.models.students import uniform_layer_map
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights

log = logging.getLogger(__name__)

STRATEGIES = ("skip", "last")


def pkd_layer_map(num_student: int, num_teacher: int, strategy: str) -> list[int]:
    """Teacher layer (0-based) matched to each of the student's first ``num_student − 1`` layers."""
    if strategy == "skip":
        return uniform_layer_map(num_student, num_teacher)[:-1]
    if strategy == "last":
        return list(range(num_teacher - num_student, num_teacher - 1))
    raise ConfigError("technique.strategy", strategy, f"allowed: {', '.join(STRATEGIES)}")


class PatientKD(Technique):
    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 10.0,
        beta: float = 100.0,
        strategy: str = "skip",
        layer_map: Sequence[int] | None = None,
        **base: Any,
    ) -> None:
        self.validate_hparams(
            alpha=alpha, temperature=temperature, beta=beta, strategy=strategy, layer_map=layer_map
        )
        super().__init__(**base)
        self.alpha, self.temperature, self.beta = alpha, temperature, beta
        num_S, num_T = structure.num_layers(self.student), structure.num_layers(self.teacher)
        if layer_map is None:
            self.layer_map = pkd_layer_map(num_S, num_T, strategy)
        else:
            self.layer_map = list(layer_map)
            log.info("PKD: technique.layer_map given, strategy=%s ignored", strategy)
        log.info(
            "PKD teacher layer -> student layer: %s",
            ", ".join(f"{t} -> {s}" for s, t in enumerate(self.layer_map)),
        )

    @classmethod
    def validate_hparams(
        cls,
        alpha: float,
        temperature: float,
        beta: float,
        strategy: str,
        layer_map: Sequence[int] | None,
        **_: Any,
    ) -> None:
        check_kd_weights(alpha, temperature)
        if beta < 0:
            raise ConfigError("technique.beta", beta, "the weight of the patient loss must be >= 0")
        if strategy not in STRATEGIES:
            raise ConfigError("technique.strategy", strategy, f"allowed: {', '.join(STRATEGIES)}")
        if layer_map is not None and not (
            isinstance(layer_map, Sequence)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layer_map)
        ):
            raise ConfigError(
                "technique.layer_map", layer_map, "null (derived) or a list of teacher layer indices >= 0"
            )

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        return Requirements(teacher=True, hidden_states=True)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        num_S, num_T = models.student.num_hidden_layers, models.teacher.num_hidden_layers
        layer_map = hparams.get("layer_map")
        models.require_same(
            "hidden_size", "PKD compares [CLS] states directly; use technique=tinybert for a projection"
        )
        if not 2 <= num_S <= num_T:
            raise ConfigError(
                "student.num_layers",
                num_S,
                f"2..{num_T} for PKD (the teacher has {num_T} layers; the last student layer is left to the "
                "prediction loss)",
            )
        if layer_map is not None and (len(layer_map) != num_S - 1 or max(layer_map) >= num_T):
            raise ConfigError(
                "technique.layer_map",
                list(layer_map),
                f"{num_S - 1} teacher layer indices in 0..{num_T - 1}, one per student layer but the last",
            )

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out_S = self.student_outputs(batch)
        out_T = self.teacher_outputs(batch)
        # hidden_states[0] is the embedding output, so encoder layer i is hidden_states[i + 1]
        cls_S = [out_S.hidden_states[s + 1][:, 0] for s in range(len(self.layer_map))]
        cls_T = [out_T.hidden_states[t + 1][:, 0] for t in self.layer_map]
        ce = F.cross_entropy(out_S.logits, batch["labels"])
        kd = kd_kl(out_S.logits, out_T.logits, self.temperature)
        pt = pkd_loss(cls_S, cls_T) / (len(cls_S) * cls_S[0].shape[-1])  # the authors' mean scale (docstring)
        loss = self.alpha * ce + (1.0 - self.alpha) * kd + self.beta * pt
        return {"loss": loss, "loss/ce": ce, "loss/kd": kd, "loss/pkd": pt}
