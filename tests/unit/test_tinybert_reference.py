"""TinyBERT as ``task_distill.py`` runs it: the prediction-layer soft cross-entropy reduced over batch and classes
(the reference's ``(-targets_prob * student_likelihood).mean()``), and each stage's own LR and schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import technique_kwargs
from slimnlp.errors import ConfigError
from slimnlp.losses.kd import soft_cross_entropy
from slimnlp.techniques.tinybert import TinyBERT


def test_soft_cross_entropy_reductions_on_a_hand_case():
    # p_T = softmax([ln 3, 0]) = [.75, .25], p_S uniform: −Σ p_T log p_S = ln 2 per example, ln 2 / 2 per class.
    logits_T, logits_S = torch.tensor([[math.log(3.0), 0.0]] * 3), torch.zeros(3, 2)
    assert soft_cross_entropy(logits_S, logits_T).item() == pytest.approx(math.log(2.0))
    assert soft_cross_entropy(logits_S, logits_T, reduction="mean").item() == pytest.approx(math.log(2.0) / 2)
    with pytest.raises(ValueError, match="reduction"):
        soft_cross_entropy(logits_S, logits_T, reduction="sum")


def test_prediction_loss_is_the_reference_expression(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    technique = TinyBERT(stage="prediction", temperature=2.0, **technique_kwargs(student, teacher))
    technique.eval()  # no dropout: the same logits in both computations
    with torch.no_grad():
        loss = technique.training_loss(tiny_batch)["loss/pred"]
        z_S = student(**{k: tiny_batch[k] for k in ("input_ids", "attention_mask")}).logits
        z_T = teacher(**{k: tiny_batch[k] for k in ("input_ids", "attention_mask")}).logits
    reference = (-F.softmax(z_T / 2.0, dim=-1) * F.log_softmax(z_S / 2.0, dim=-1)).mean()  # task_distill.py
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    summed = TinyBERT(stage="prediction", temperature=2.0, prediction_reduction="batchmean",
                      **technique_kwargs(student, teacher))
    summed.eval()
    with torch.no_grad():
        # batchmean = C x mean: the weight that makes the two reductions equal
        assert summed.training_loss(tiny_batch)["loss/pred"].item() == pytest.approx(3 * loss.item(), rel=1e-6)


def test_each_stage_owns_the_reference_lr_and_schedule():
    intermediate, prediction = TinyBERT.stages(stage="both")
    assert intermediate.lr == 5e-5 and intermediate.lr_scheduler == {"name": "constant", "warmup_ratio": 0.0}
    assert prediction.lr == 3e-5 and prediction.lr_scheduler == {"name": "linear", "warmup_ratio": 0.1}
    own = TinyBERT.stages(stage="both", intermediate_lr=None, prediction_lr=1e-4)
    assert [s.lr for s in own] == [None, 1e-4]  # null: the run's optim.optimizer.lr


@pytest.mark.parametrize(
    "hparams, key",
    [({"intermediate_lr": 0.0}, "intermediate_lr"), ({"prediction_lr": "fast"}, "prediction_lr"),
     ({"prediction_reduction": "sum"}, "prediction_reduction")],
)
def test_bad_stage_optimizer_settings_are_refused(hparams, key):
    with pytest.raises(ConfigError, match=f"technique.{key}"):
        TinyBERT.check_hparams(**hparams)
