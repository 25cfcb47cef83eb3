"""L0 pruning: hard-concrete gates sample exact zeros at the rate their expected L0 says and are deterministic in
evaluation, the initial gates leave the model unchanged, the Lagrangian's multipliers climb while the expected
sparsity misses the target and pull it up, the export folds the test-time gates in, bad input fails early."""

import copy

import pytest
import torch

from conftest import fit_steps, technique_kwargs
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models.structure import prunable_modules
from slimnlp.modules.masking import HardConcreteMask, zero_fraction
from slimnlp.schedules import Constant
from slimnlp.techniques.l0_pruning import L0Pruning


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_sampled_gates_are_zero_as_often_as_the_expected_l0_says(log_alpha):
    torch.manual_seed(0)
    gate = HardConcreteMask(torch.Size([200, 200]))
    gate.log_alpha.data.fill_(log_alpha)
    z = gate.train().mask(torch.ones(200, 200))
    expected = float(gate.expected_nonzero()) / z.numel()
    assert float((z > 0).float().mean()) == pytest.approx(expected, abs=0.01)  # 40,000 draws: ~4 s.e.
    assert 0 < float((z == 1).float().mean()) and float(z.min()) == 0.0  # the stretch gives exact 0s and 1s
    gate.log_alpha.data.add_(torch.randn(200, 200))  # spread, so the kept ones can be checked
    test_time = gate.eval().mask(torch.ones(1))
    assert set(test_time.unique().tolist()) <= {0.0, 1.0}
    assert int(test_time.sum()) == round(float(gate.expected_nonzero()))  # the expected count, exactly
    assert gate.log_alpha[test_time == 1].min() >= gate.log_alpha[test_time == 0].max()  # the largest log α


def _l0(model, **hparams):
    return L0Pruning(distill=False, schedule=Constant(end=1.0), **hparams, **technique_kwargs(model))


def test_initial_gates_keep_almost_every_weight(tiny_bert):
    technique = _l0(tiny_bert)
    technique.prepare()
    kept = sum(m.kept(None) for m in technique.masks()) / sum(m.log_alpha.numel() for m in technique.masks())
    assert kept == pytest.approx(0.989, abs=0.002)  # P(z ≠ 0) = σ(log 19 + (2/3)·log 11)


def test_the_lagrangian_climbs_while_the_target_is_missed_and_pulls_the_sparsity_up(tiny_bert, tiny_batch):
    reached = {}
    for lagrangian_lr in (0.1, 1e-9):  # the controller, and the same run without it
        torch.manual_seed(0)
        technique = _l0(copy.deepcopy(tiny_bert), sparsity=0.5, score_lr=0.1, lagrangian_lr=lagrangian_lr)
        technique.prepare()
        start = float(technique.expected_sparsity())
        fit_steps(technique, tiny_batch, 30)
        reached[lagrangian_lr] = float(technique.expected_sparsity()) - start
        if lagrangian_lr == 0.1:
            lambda_1, lambda_2 = technique.lambdas.tolist()
            assert lambda_1 < 0 < lambda_2  # ascent on λ₁(ŝ − t) with ŝ < t, and on λ₂(ŝ − t)² ≥ 0
    assert reached[0.1] > 0.1 and reached[1e-9] < 0.03, reached


def test_the_export_folds_the_test_time_gates_into_the_weights(tiny_bert, tiny_batch):
    technique = _l0(tiny_bert)
    technique.prepare()
    for _, mask in [(p, m) for p, m in zip(technique.pruned_paths, technique.masks())]:
        mask.log_alpha.data.uniform_(-4, 4)  # a spread of gates
    technique.eval()
    expected_zeros = sum(int((m.deterministic() == 0).sum()) for m in technique.masks())
    with torch.no_grad():
        gated = technique(tiny_batch)
    student = technique.export_student()
    weights = [module.weight for _, module in prunable_modules(student, ["encoder"])]
    assert sum(int((w == 0).sum()) for w in weights) == expected_zeros
    assert technique.compression_metrics()["compress/sparsity"] == zero_fraction(weights) > 0.3
    with torch.no_grad():
        torch.testing.assert_close(student(**model_inputs(tiny_batch)).logits, gated)


@pytest.mark.parametrize(
    ("hparams", "key"),
    [({"sparsity": 1.0}, "technique.sparsity"), ({"score_lr": 0}, "technique.score_lr"),
     ({"lagrangian_lr": -1.0}, "technique.lagrangian_lr"), ({"init_drop": 1.0}, "technique.init_drop")],
)
def test_bad_l0_hparams_name_the_key(hparams, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        L0Pruning.check_hparams(**hparams)
