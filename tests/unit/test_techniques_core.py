"""finetune and kd: one real Lightning step each, and the base-class guarantees every technique inherits."""

import pytest
import torch

from conftest import fit_steps, technique_kwargs
from slimnlp.errors import ConfigError
from slimnlp.techniques.finetune import FineTune
from slimnlp.techniques.kd import LogitKD


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_kd_step_updates_student_never_teacher(tiny_pair, tiny_batch, loss):
    student, teacher = tiny_pair
    technique = LogitKD(alpha=0.3, temperature=2.0, loss=loss, **technique_kwargs(student, teacher))
    before_S, before_T = _snapshot(student), _snapshot(teacher)
    trainer = fit_steps(technique, tiny_batch, steps=2)
    logged = trainer.callback_metrics
    for name in ("train/loss", "loss/ce", "loss/kd"):
        assert torch.isfinite(logged[name]), name
    expected = 0.3 * logged["loss/ce"] + 0.7 * logged["loss/kd"]
    assert logged["train/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert _changed(before_S, student), "the student did not train"
    assert not _changed(before_T, teacher), "the teacher must stay frozen"
    assert not teacher.training


def test_teacher_is_not_a_submodule(tiny_pair):
    student, teacher = tiny_pair
    technique = LogitKD(**technique_kwargs(student, teacher))
    names = {n for n, _ in technique.named_parameters()}
    assert all(n.startswith("student.") for n in names)
    assert not any(k.startswith("_teacher") for k in technique.state_dict())


def test_finetune_loss_decreases(tiny_pair, tiny_batch):
    student, _ = tiny_pair
    technique = FineTune(**technique_kwargs(student, lr=5e-3))
    technique.eval()
    with torch.no_grad():
        before = technique.training_loss(tiny_batch)["loss"].item()
    fit_steps(technique, tiny_batch, steps=30)
    technique.eval()
    with torch.no_grad():
        after = technique.training_loss(tiny_batch)["loss"].item()
    assert after < before * 0.5


@pytest.mark.parametrize(
    "hparams, key",
    [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"temperature": -1.0}, "temperature"),
     ({"temperature": 0.0}, "temperature"), ({"loss": "cosine"}, "loss")],
)
def test_kd_rejects_bad_hparams_before_any_model(hparams, key):
    with pytest.raises(ConfigError, match=f"technique.{key}"):
        LogitKD.check_hparams(**hparams)


def test_kd_without_teacher_is_refused(tiny_pair):
    student, _ = tiny_pair
    with pytest.raises(ConfigError, match="needs a teacher"):
        LogitKD(**technique_kwargs(student, None))
