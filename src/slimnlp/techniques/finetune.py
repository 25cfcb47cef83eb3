"""Plain fine-tuning with cross-entropy: the no-distillation baseline every paper compares against,
and the loop that fine-tunes a teacher before it teaches."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

from slimnlp.techniques.base import Technique


class FineTune(Technique):
    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ce = F.cross_entropy(self(batch), batch["labels"])
        return {"loss": ce, "loss/ce": ce}
