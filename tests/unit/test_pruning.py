"""Unstructured pruning: mask mechanics, the sparsity ramp, exported zeros, compact artifacts, bad input."""

import copy
import itertools

import pytest
import torch
from torch import nn

from conftest import fit_steps, technique_kwargs
from slimnlp.artifacts import MANIFEST_NAME, artifact_bytes, load_student, save_student
from slimnlp.errors import ConfigError
from slimnlp.models.structure import prunable_modules
from slimnlp.modules.masking import (
    MagnitudeMask,
    ScoreThresholdMask,
    ScoreTopKMask,
    add_mask,
    masks_of,
    materialize,
    top_fraction,
    zero_fraction,
)
from slimnlp.schedules import Constant, Cubic
from slimnlp.techniques.magnitude_pruning import MagnitudePruning
from slimnlp.techniques.movement_pruning import MovementPruning
from slimnlp.techniques.pruning import DEFAULT_RAMP, global_levels


def _encoder_weights(model):
    return [m.weight for _, m in prunable_modules(model, ["encoder"])]


# ---------------------------------------------------------------- masks


def test_top_fraction_keeps_exactly_the_largest():
    importance = torch.tensor([[0.3, -5.0, 2.0], [0.1, 4.0, 1.0]])
    mask = top_fraction(importance, 0.5)
    assert mask.tolist() == [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    assert top_fraction(importance, 0.0).sum() == 0
    assert top_fraction(importance, 1.0).sum() == 6


def test_magnitude_mask_prunes_the_smallest_weights_and_passes_gradient_to_kept_ones():
    linear = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.1, -0.9, 0.5, -0.05], [0.7, 0.2, -0.3, 0.8]]))
    mask = add_mask(linear, MagnitudeMask(level=0.5))
    kept = [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]]
    torch.testing.assert_close(linear.weight, linear.parametrizations.weight.original * torch.tensor(kept))
    linear(torch.ones(1, 4)).sum().backward()
    grad = linear.parametrizations.weight.original.grad
    assert grad.tolist() == kept  # pruned weights get no gradient
    assert mask.kept(linear.parametrizations.weight.original) == 4


def test_movement_scores_get_the_straight_through_gradient_w_times_dl_dw():
    """∂L/∂S = ∂L/∂W' ⊙ W (Sanh et al. 2020, eq. 3 with the straight-through estimator)."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 3)
    mask = add_mask(linear, ScoreTopKMask(linear.weight.shape, init=0.0, level=1.0))
    x = torch.randn(5, 6)
    linear(x).pow(2).sum().backward()
    W = linear.parametrizations.weight.original.detach()
    out = linear(x)  # dense mask at level 1: W' = W
    dL_dWprime = torch.autograd.grad(out.pow(2).sum(), linear.parametrizations.weight.original)[0]
    torch.testing.assert_close(mask.scores.grad, dL_dWprime * W)


def test_soft_movement_mask_thresholds_sigmoid_scores_and_keeps_half_a_percent():
    mask = ScoreThresholdMask(torch.Size([20, 50]), level=0.5)
    with torch.no_grad():
        mask.scores.copy_(torch.linspace(-3, 3, 1000).view(20, 50))
    kept = mask.mask(torch.ones(20, 50))
    assert int(kept.sum()) == int((torch.linspace(-3, 3, 1000) > 0).sum())
    mask.set_level(0.999)  # nothing above: the reference keeps the top 0.5% + 1
    assert int(mask.mask(torch.ones(20, 50)).sum()) == int(0.005 * 1000) + 1


def test_materialize_folds_masks_into_zeros_with_identical_logits(tiny_bert, tiny_batch):
    inputs = {k: tiny_batch[k] for k in ("input_ids", "attention_mask")}
    for _, module in prunable_modules(tiny_bert, ["encoder"]):
        add_mask(module, MagnitudeMask(level=0.3))
    masked = tiny_bert(**inputs).logits
    materialize(tiny_bert)
    assert not list(masks_of(tiny_bert))
    assert all(type(m.weight) is nn.Parameter for _, m in prunable_modules(tiny_bert, ["encoder"]))
    torch.testing.assert_close(tiny_bert(**inputs).logits, masked, rtol=0, atol=0)
    assert zero_fraction(_encoder_weights(tiny_bert)) == pytest.approx(0.7, abs=0.005)


def test_prunable_parts_are_what_their_names_say(tiny_bert):
    encoder = prunable_modules(tiny_bert, ["encoder"])
    assert len(encoder) == 4 * 6 and all(".encoder.layer." in p for p, _ in encoder)
    assert [p for p, _ in prunable_modules(tiny_bert, ["classifier"])] == ["classifier"]
    assert [p for p, _ in prunable_modules(tiny_bert, ["pooler"])] == ["bert.pooler.dense"]
    assert {type(m) for _, m in prunable_modules(tiny_bert, ["embeddings"])} == {nn.Embedding}


def test_global_levels_rank_all_matrices_together():
    small, large = torch.full((10, 10), 0.1), torch.full((10, 10), 5.0)
    large[0, 0] = 0.05
    levels = global_levels([small, large], keep=0.5)
    assert levels == [0.01, 0.99]  # the 100 largest: 99 in `large`, then one of the 100 tied in `small`
    tied = global_levels([torch.zeros(10, 10), torch.zeros(30, 10)], keep=0.25)  # scores before they move
    assert tied == [0.25, 0.25]


# ---------------------------------------------------------------- compact artifacts


def test_sparse_artifact_is_smaller_and_reloads_the_same_logits(tiny_bert, tiny_batch, tokenizer, tmp_path):
    inputs = {k: tiny_batch[k] for k in ("input_ids", "attention_mask")}
    dense_dir = save_student(tiny_bert, tmp_path / "dense")
    assert not (dense_dir / MANIFEST_NAME).exists()  # dense models stay plain HF folders
    sizes = {}
    for sparsity in (0.5, 0.9):
        model = load_student(dense_dir)
        for _, module in prunable_modules(model, ["encoder"]):
            add_mask(module, MagnitudeMask(level=1 - sparsity))
        materialize(model)
        folder = save_student(model, tmp_path / f"s{sparsity}")
        assert (folder / MANIFEST_NAME).exists()
        reloaded = load_student(folder)
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
        assert zero_fraction(_encoder_weights(reloaded)) == pytest.approx(sparsity, abs=0.005)
        sizes[sparsity] = artifact_bytes(folder)
    encoder_bytes = sum(w.numel() * 4 for w in _encoder_weights(tiny_bert))
    dense = artifact_bytes(dense_dir)
    # bitmask (1/32 of fp32) + the kept values: the encoder's bytes fall with the sparsity
    for sparsity, size in sizes.items():
        expected = dense - encoder_bytes + encoder_bytes * ((1 - sparsity) + 1 / 32)
        assert size == pytest.approx(expected, rel=0.01), sparsity
    assert sizes[0.9] < sizes[0.5] < dense


# ---------------------------------------------------------------- techniques


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_reaches_the_target_sparsity_on_the_exported_weights(tiny_pair, tiny_batch, scope):
    student, teacher = tiny_pair
    technique = MagnitudePruning(sparsity=0.8, scope=scope, **technique_kwargs(student, teacher))
    fit_steps(technique, tiny_batch, steps=6)
    exported = technique.export_student()
    metrics = technique.compression_metrics()
    assert metrics["compress/sparsity"] == pytest.approx(0.8, abs=0.005)
    assert zero_fraction(_encoder_weights(exported)) == metrics["compress/sparsity"]
    assert not list(masks_of(exported))
    if scope == "layer":  # each matrix on its own
        for w in _encoder_weights(exported):
            assert zero_fraction([w]) == pytest.approx(0.8, abs=1 / w.numel() + 1e-9)
    # embeddings and classifier untouched by default
    assert zero_fraction([exported.classifier.weight]) == 0.0


def test_the_kept_fraction_follows_the_cubic_ramp_step_by_step(tiny_pair, tiny_batch):
    student, _ = tiny_pair
    schedule = Cubic(start=0.0, end=1.0, warmup=0.2, cooldown=0.2)

    class Recorded(MagnitudePruning):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.kept: list[float] = []

        def training_loss(self, batch):
            self.kept.append(self.kept_fraction())  # what this step's forward pass is masked with
            return super().training_loss(batch)

    technique = Recorded(sparsity=0.6, schedule=schedule, distill=False, **technique_kwargs(student))
    fit_steps(technique, tiny_batch, steps=10)
    kept = technique.kept
    expected = [1 - 0.6 * schedule(step, 10) for step in range(10)]
    assert kept == pytest.approx(expected, abs=0.01)
    assert all(a >= b for a, b in itertools.pairwise(kept))  # monotone
    assert kept[0] == 1.0 and kept[-1] == pytest.approx(0.4, abs=0.01)
    assert technique.compression_metrics()["compress/sparsity"] == pytest.approx(0.6, abs=0.005)


def test_one_shot_pruning_is_at_the_target_from_the_first_step(tiny_pair, tiny_batch):
    student, _ = tiny_pair
    technique = MagnitudePruning(sparsity=0.5, schedule=Constant(), distill=False, **technique_kwargs(student))
    fit_steps(technique, tiny_batch, steps=1)
    assert technique.kept_fraction() == pytest.approx(0.5, abs=0.005)


def test_default_ramp_is_dense_first_and_at_the_target_last():
    assert DEFAULT_RAMP(0, 100) == 0.0 and DEFAULT_RAMP(10, 100) == 0.0
    assert DEFAULT_RAMP(80, 100) == 1.0 and DEFAULT_RAMP(100, 100) == 1.0
    values = [DEFAULT_RAMP(s, 100) for s in range(101)]
    assert values == sorted(values)


def test_movement_scores_train_in_their_own_group_and_move(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    technique = MovementPruning(sparsity=0.5, score_lr=0.05, **technique_kwargs(student, teacher, lr=1e-3))
    trainer = fit_steps(technique, tiny_batch, steps=4)
    groups = trainer.optimizers[0].param_groups
    score_ids = {id(s) for s in technique.scores()}
    score_group = next(g for g in groups if {id(p) for p in g["params"]} == score_ids)
    assert score_group["lr"] == 0.05 and score_group["weight_decay"] == 0.0
    assert not any(id(p) in score_ids for g in groups if g is not score_group for p in g["params"])
    assert all(s.abs().sum() > 0 for s in technique.scores())  # from constant 0, they moved
    assert technique.compression_metrics()["compress/sparsity"] == pytest.approx(0.5, abs=0.005)


def test_soft_movement_penalty_drives_sparsity(tiny_pair, tiny_batch):
    results = {}
    for lam in (0.0, 1e5):
        student, teacher = copy.deepcopy(tiny_pair)
        technique = MovementPruning(
            variant="soft", threshold=0.5, regularization=lam, score_lr=0.2, score_init=1.0, schedule=Constant(),
            **technique_kwargs(student, teacher),
        )
        trainer = fit_steps(technique, tiny_batch, steps=10)  # Adam: scores move at most 0.2 a step
        if lam:
            logged = trainer.callback_metrics
            assert logged["train/loss"] > logged["loss/score_l1"] * lam * 0.99  # the penalty is in the loss
        technique.export_student()
        metrics = technique.compression_metrics()
        assert "compress/target_sparsity" not in metrics  # soft: no target, only the measurement
        results[lam] = metrics["compress/sparsity"]
    assert results[0.0] < 0.3  # sigmoid(1) > 0.5: kept unless the penalty pushes the scores down
    assert results[1e5] > 0.9


@pytest.mark.parametrize(
    "cls, hparams, key",
    [
        (MagnitudePruning, {"sparsity": 1.0}, "technique.sparsity"),
        (MagnitudePruning, {"sparsity": -0.1}, "technique.sparsity"),
        (MagnitudePruning, {"scope": "model"}, "technique.scope"),
        (MagnitudePruning, {"targets": ["attention"]}, "technique.targets"),
        (MagnitudePruning, {"targets": []}, "technique.targets"),
        (MagnitudePruning, {"alpha": 2.0}, "technique.alpha"),
        (MovementPruning, {"variant": "medium"}, "technique.variant"),
        (MovementPruning, {"threshold": 1.0}, "technique.threshold"),
        (MovementPruning, {"score_lr": 0.0}, "technique.score_lr"),
        (MovementPruning, {"regularization": -1.0}, "technique.regularization"),
    ],
)
def test_bad_pruning_hparams_fail_naming_the_key(cls, hparams, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cls.check_hparams(**hparams)
