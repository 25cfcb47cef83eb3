"""Lottery tickets: a round prunes the smallest trained weights globally to its share and rewinds the rest to the
saved state (classifier left as trained), masks only shrink and stay fixed in training, the ticket keeps its
sparsity, ``rewind_step`` saves the weights after that many steps, bad input fails early."""

import copy

import pytest
import torch

from conftest import fit_steps, technique_kwargs
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.masking import zero_fraction
from slimnlp.techniques.lottery_ticket import LotteryTicket, plain_state

TARGETS = ("encoder", "pooler")


def _weights(model) -> dict[str, torch.Tensor]:
    return {path: module.weight.detach().clone() for path, module in structure.prunable_modules(model, TARGETS)}


def _round(model, batch, index: int, steps: int = 3, **hparams):
    torch.manual_seed(0)
    technique = LotteryTicket(sparsity=0.5, rounds=2, round_index=index, **hparams, **technique_kwargs(model))
    fit_steps(technique, batch, steps)
    return technique


def test_a_round_prunes_the_smallest_trained_weights_globally_and_rewinds_the_rest(tiny_bert, tiny_batch):
    start = _weights(tiny_bert)
    classifier_start = tiny_bert.classifier.weight.detach().clone()
    technique = _round(tiny_bert, tiny_batch, 1)
    trained = {path: (mask(w) * w).detach().clone() for path, (mask, w) in zip(technique.pruned_paths, technique.masked())}
    student = technique.export_student()
    after = _weights(student)
    assert zero_fraction(after.values()) == pytest.approx(0.25, abs=1e-4)  # round 1 of 2 towards 0.5
    assert technique.compression_metrics()["compress/target_sparsity"] == 0.25
    kept = {p: after[p] != 0 for p in after}
    for path in after:  # kept weights are the starting ones again (rewind_step=0)
        torch.testing.assert_close(after[path][kept[path]], start[path][kept[path]])
    smallest_kept = min(trained[p][kept[p]].abs().min() for p in after)
    largest_pruned = max(trained[p][~kept[p]].abs().max() for p in after if (~kept[p]).any())
    assert smallest_kept >= largest_pruned  # one ranking over every matrix, on the trained weights
    levels = [float(k.float().mean()) for k in kept.values()]
    assert max(levels) - min(levels) > 0.05  # global: matrices end at different levels
    assert not torch.equal(student.classifier.weight, classifier_start)  # the head is not rewound (reference)


def test_the_next_round_keeps_old_zeros_fixed_and_nests_its_mask(tiny_bert, tiny_batch):
    first = _round(tiny_bert, tiny_batch, 1).export_student()
    zeros_before = {p: w == 0 for p, w in _weights(first).items()}
    start = _weights(first)
    second = _round(first, tiny_batch, 2)
    during = {p: (m(w) * w).detach() for p, (m, w) in zip(second.pruned_paths, second.masked())}
    assert all(bool((during[p][zeros_before[p]] == 0).all()) for p in during)  # pruned stay pruned in training
    assert any(not torch.equal(during[p], start[p]) for p in during)  # the rest trained
    after = _weights(second.export_student())
    assert zero_fraction(after.values()) == pytest.approx(0.5, abs=1e-4)
    for path, weight in after.items():
        assert bool((weight[zeros_before[path]] == 0).all())  # masks only shrink
        torch.testing.assert_close(weight[weight != 0], start[path][weight != 0])  # rewound to this round's start


def test_the_ticket_trains_at_its_sparsity_and_exports_it(tiny_bert, tiny_batch):
    subnetwork = _round(_round(tiny_bert, tiny_batch, 1).export_student(), tiny_batch, 2).export_student()
    start = _weights(subnetwork)
    ticket = _round(subnetwork, tiny_batch, 3)
    assert ticket.is_ticket
    final = _weights(ticket.export_student())
    assert zero_fraction(final.values()) == pytest.approx(0.5, abs=1e-4)
    assert ticket.compression_metrics() == {"compress/sparsity": pytest.approx(0.5, abs=1e-4),
                                            "compress/target_sparsity": 0.5, "compress/round": 3.0}
    assert any(not torch.equal(final[p], start[p]) for p in final)  # fine-tuned, not rewound


def test_rewind_step_saves_the_weights_after_that_many_steps_and_checkpoints_them(tiny_bert, tiny_batch):
    reference = copy.deepcopy(tiny_bert)
    late = _round(tiny_bert, tiny_batch, 1, steps=4, rewind_step=2)
    early = _round(reference, tiny_batch, 1, steps=2)
    expected = plain_state(structure.backbone(early.student))
    assert late.rewind_state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(late.rewind_state[key], value)
    checkpoint = {}
    late.on_save_checkpoint(checkpoint)
    restored = LotteryTicket(rounds=2, rewind_step=2, **technique_kwargs(copy.deepcopy(reference)))
    restored.on_load_checkpoint(checkpoint)
    assert restored.rewind_state is checkpoint["lottery_rewind_state"]


def test_a_rewind_step_past_the_first_round_fails_before_training(tiny_bert, tiny_batch):
    with pytest.raises(ConfigError, match=r"technique\.rewind_step.*before the first round's end \(3\)"):
        _round(tiny_bert, tiny_batch, 1, steps=3, rewind_step=3)


def test_stages_are_the_rounds_then_the_ticket():
    stages = LotteryTicket.stages(rounds=3, round_epochs=2)
    assert [(s.name, s.hparams, s.max_epochs, s.select_best) for s in stages] == [
        ("round1", {"round_index": 1}, 2, False), ("round2", {"round_index": 2}, 2, False),
        ("round3", {"round_index": 3}, 2, False), ("ticket", {"round_index": 4}, None, True)]


@pytest.mark.parametrize(
    ("hparams", "key"),
    [({"sparsity": 1.0}, "technique.sparsity"), ({"rounds": 0}, "technique.rounds"),
     ({"round_epochs": 0.5}, "technique.round_epochs"), ({"rewind_step": -1}, "technique.rewind_step"),
     ({"targets": ["heads"]}, "technique.targets"), ({"round_index": 5}, "technique.round_index")],
)
def test_bad_lottery_hparams_name_the_key(hparams, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        LotteryTicket.check_hparams(**hparams)
