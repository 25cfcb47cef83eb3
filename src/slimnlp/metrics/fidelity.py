"""How closely the student mimics its teacher, beyond both being accurate.

- **Label loyalty** (Xu et al. 2021, "Beyond Preserved Accuracy: Evaluating Loyalty and Robustness of BERT
  Compression"): the share of examples on which student and teacher predict the same label
  (``fidelity/agreement``).
- **Probability loyalty** (same paper): ``1 − √JS(p_T ‖ p_S)`` per example, averaged. The authors' released
  code points to ``scipy.spatial.distance.jensenshannon``, i.e. the square root of the Jensen–Shannon
  divergence in natural-log units; we use the same, so a value here equals theirs (range ``[1 − √ln 2, 1]``).
- **KL(p_T ‖ p_S)** per example, averaged (Stanton et al. 2021, "Does Knowledge Distillation Really Work?",
  whose fidelity measures are top-1 agreement and this KL).

All three are torchmetrics ``MeanMetric`` subclasses, so they sum correctly across DDP ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric


def kl_per_example(logits_T: Tensor, logits_S: Tensor) -> Tensor:
    """``KL(p_T ‖ p_S)`` of each row, in nats."""
    log_p_T, log_p_S = logits_T.float().log_softmax(-1), logits_S.float().log_softmax(-1)
    return (log_p_T.exp() * (log_p_T - log_p_S)).sum(-1)


def js_distance_per_example(logits_T: Tensor, logits_S: Tensor) -> Tensor:
    """``√JS(p_T, p_S)`` of each row (natural log), as ``scipy.spatial.distance.jensenshannon``."""
    p_T, p_S = logits_T.float().softmax(-1), logits_S.float().softmax(-1)
    log_m = (0.5 * (p_T + p_S)).log()

    def kl_to_m(p: Tensor) -> Tensor:  # 0·log 0 = 0
        return torch.where(p > 0, p * (p.log() - log_m), torch.zeros_like(p)).sum(-1)

    js = 0.5 * (kl_to_m(p_T) + kl_to_m(p_S))
    return js.clamp_min(0).sqrt()


class LabelLoyalty(MeanMetric):
    """Share of examples where the student's top label is the teacher's."""

    def update(self, logits_T: Tensor, logits_S: Tensor) -> None:  # type: ignore[override]
        super().update((logits_T.argmax(-1) == logits_S.argmax(-1)).float())


class ProbabilityLoyalty(MeanMetric):
    """Mean ``1 − √JS(p_T, p_S)``: 1 when the student's predicted distribution is the teacher's."""

    def update(self, logits_T: Tensor, logits_S: Tensor) -> None:  # type: ignore[override]
        super().update(1.0 - js_distance_per_example(logits_T, logits_S))


class TeacherStudentKL(MeanMetric):
    """Mean ``KL(p_T ‖ p_S)`` in nats: 0 when the distributions match."""

    def update(self, logits_T: Tensor, logits_S: Tensor) -> None:  # type: ignore[override]
        super().update(kl_per_example(logits_T, logits_S))


FIDELITY_METRICS: dict[str, type[MeanMetric]] = {
    "agreement": LabelLoyalty,
    "prob_loyalty": ProbabilityLoyalty,
    "kl": TeacherStudentKL,
}
