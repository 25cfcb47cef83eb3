"""Cross-layer sharing: the patterns of the papers, one module per unique layer, gradients summed over its
uses, and an artifact that stores it once."""

from __future__ import annotations

import copy

import pytest
import torch

from slimnlp.artifacts import artifact_bytes, load_student, save_student
from slimnlp.batch import model_inputs
from slimnlp.models import structure
from slimnlp.techniques.layer_sharing import sharing_pattern


@pytest.mark.parametrize(
    ("strategy", "unique", "pattern"),
    [("all", None, [0, 0, 0, 0, 0, 0]), ("sequence", 3, [0, 0, 1, 1, 2, 2]), ("cycle", 3, [0, 1, 2, 0, 1, 2]),
     ("cycle_rev", 3, [0, 1, 2, 2, 1, 0]), ("cycle_rev", 2, [0, 1, 0, 1, 1, 0]), ("sandwich", None, [0, 1, 1, 1, 1, 2])],
)
def test_patterns_follow_the_papers(strategy, unique, pattern):
    assert sharing_pattern(strategy, 6, unique) == pattern


def test_a_pattern_must_cover_the_depth():
    with pytest.raises(ValueError, match="do not divide"):
        sharing_pattern("cycle", 6, 4)


def test_a_shared_layer_sums_its_gradients_and_is_stored_once(tiny_bert, tiny_batch, tmp_path):
    unshared = copy.deepcopy(tiny_bert)
    layers = list(structure.encoder_layers(tiny_bert))
    structure.set_encoder_layers(tiny_bert, [layers[0], layers[1], layers[0], layers[1]])  # cycle, 2 of 4
    same = list(structure.encoder_layers(unshared))
    for i, j in ((2, 0), (3, 1)):  # the unshared copy runs the same weights as independent tensors
        same[i].load_state_dict(same[j].state_dict())
    for model in (tiny_bert, unshared):
        model.train(False)
        model(**model_inputs(tiny_batch), labels=tiny_batch["labels"]).loss.backward()
    shared_grad = layers[0].intermediate.dense.weight.grad
    summed = same[0].intermediate.dense.weight.grad + same[2].intermediate.dense.weight.grad
    torch.testing.assert_close(shared_grad, summed, atol=1e-6, rtol=1e-5)
    small, big = save_student(tiny_bert, tmp_path / "shared"), save_student(unshared, tmp_path / "unshared")
    layer_bytes = sum(p.numel() * 4 for p in layers[0].parameters())
    # two layers' tensors fewer, plus their entries in the safetensors header (names and offsets)
    assert 2 * layer_bytes < artifact_bytes(big) - artifact_bytes(small) < 2.2 * layer_bytes
    reloaded = structure.encoder_layers(load_student(small))
    assert reloaded[0] is reloaded[2] and reloaded[1] is reloaded[3] and reloaded[0] is not reloaded[1]
