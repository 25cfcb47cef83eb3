"""BinaryBERT's pieces: BWN with a straight-through gradient, ternary weight splitting that preserves the ternary
function exactly, the packed artifact, and the stages the reference scripts run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimnlp.artifacts import load_student, save_student
from slimnlp.modules.binary import (
    BinaryLinear,
    SplitBinaryLinear,
    bwn_binarize,
    fake_binarize,
    ternary_weight_split,
)
from slimnlp.modules.quantization import twn_ternarize
from slimnlp.techniques.binary import BinaryBERT


@pytest.mark.parametrize("shape", [(64, 48), (37, 129), (8, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_split_halves_binarize_to_the_ternary_weight(shape, seed):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.04
    codes, alpha = twn_ternarize(w)
    w1, w2 = ternary_weight_split(w)
    torch.testing.assert_close(fake_binarize(w1) + fake_binarize(w2), codes.float() * alpha, atol=1e-6, rtol=0)
    # the two halves get the same binary scale (that is what cancels them where the ternary weight is 0)
    assert bwn_binarize(w1)[1] == pytest.approx(float(bwn_binarize(w2)[1]), rel=1e-5)
    assert not torch.equal(w1, w2)


def test_bwn_scale_is_the_mean_magnitude_and_the_gradient_passes_straight_through():
    w = torch.tensor([[0.3, -0.1], [0.0, -0.6]], requires_grad=True)
    out = fake_binarize(w)
    torch.testing.assert_close(out.detach(), torch.tensor([[0.25, -0.25], [0.25, -0.25]]))
    (out * torch.arange(4.0).view(2, 2)).sum().backward()
    torch.testing.assert_close(w.grad, torch.arange(4.0).view(2, 2))


@pytest.mark.parametrize("split", [True, False])
def test_the_artifact_computes_what_training_computed_and_reloads(tmp_path, split, tiny_bert):
    model = tiny_bert
    layer = model.bert.encoder.layer[0].intermediate.dense
    trained = SplitBinaryLinear.from_linear(layer, split=split, activation_bits=8)
    with torch.no_grad():  # fine-tuning moves the planes apart
        for w in trained.weights:
            w.add_(torch.randn_like(w) * 0.01)
    stored = BinaryLinear.from_split(trained)
    x = torch.randn(2, 5, layer.in_features)
    torch.testing.assert_close(stored(x), trained(x), atol=1e-5, rtol=0)
    assert stored.stored_bytes() == (2 if split else 1) * (layer.in_features * layer.out_features // 8) + 4 * stored.planes
    model.bert.encoder.layer[0].intermediate.dense = stored
    save_student(model, tmp_path / "student")
    reloaded = load_student(tmp_path / "student").bert.encoder.layer[0].intermediate.dense
    assert isinstance(reloaded, BinaryLinear)
    torch.testing.assert_close(reloaded(x), stored(x))


def test_stages_follow_the_reference_scripts():
    stages = BinaryBERT.stages(**BinaryBERT.defaults_filled())
    assert [(s.name, s.max_epochs, s.lr, s.select_best) for s in stages] == [
        ("ternary_intermediate", 2, pytest.approx(2.5e-5), False),
        ("ternary_prediction", 2, 1e-5, True),
        ("binary_intermediate", 2, pytest.approx(1.25e-4), False),
        ("binary_prediction", 2, 5e-5, True),
    ]
    joint = BinaryBERT.stages(**BinaryBERT.defaults_filled(kd="joint", split=False, binary_lr=None))
    assert [(s.name, s.hparams, s.lr) for s in joint] == [("binary", {"phase": "binary", "kd": "joint"}, None)]


def test_a_split_layer_starts_exactly_where_the_ternary_layer_ended():
    linear = nn.Linear(32, 16)
    codes, alpha = twn_ternarize(linear.weight)
    split = SplitBinaryLinear.from_linear(linear, split=True, activation_bits=None)
    x = torch.randn(4, 32)
    torch.testing.assert_close(split(x), nn.functional.linear(x, codes.float() * alpha, linear.bias), atol=1e-5, rtol=0)
