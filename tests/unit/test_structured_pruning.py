"""Structured pruning: gated heads/units equal sliced ones, the sliced model saves smaller and reloads the same,
Michel et al.'s importance is the gate gradient, iterative pruning reaches its counts, bad input fails early."""

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import fit_steps, technique_kwargs, tiny_encoder
from slimnlp.artifacts import artifact_bytes, load_student, save_student
from slimnlp.errors import ConfigError
from slimnlp.models import structure, surgery
from slimnlp.modules.gates import HeadAndUnitGates
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.head_pruning import HeadPruning, layer_normalized, lowest_to_gate


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _gate_some(gates, heads: bool = True):
    if heads:
        gates.heads[0, [1, 3]] = 0
        gates.heads[2, 0] = 0
    gates.units[1, ::3] = 0
    gates.units[3, :40] = 0


@pytest.mark.parametrize("kind", ["bert", "distilbert", "mpnet"])
def test_gated_heads_and_units_equal_the_sliced_model(kind, tiny_bert, tiny_batch, tokenizer):
    """Masked vs materialized: gate 0 computes what removing the head / unit computes (padding included)."""
    model = tiny_bert if kind == "bert" else tiny_encoder(kind, tokenizer.vocab_size)
    gates = HeadAndUnitGates(model)
    _gate_some(gates, heads=kind != "mpnet")
    gates.attach(model)
    gated = _logits(model, tiny_batch)
    sliced = gates.materialize(model)
    assert [surgery.num_heads(sliced, i) for i in range(4)] == ([4] * 4 if kind == "mpnet" else [2, 4, 3, 4])
    assert [surgery.ffn_width(sliced, i) for i in range(4)] == [64, 64 - 22, 64, 24]
    torch.testing.assert_close(_logits(sliced, tiny_batch), gated, atol=1e-5, rtol=1e-5)


def test_gates_change_the_output_and_detach_restores_it(tiny_bert, tiny_batch):
    dense = _logits(tiny_bert, tiny_batch)
    gates = HeadAndUnitGates(tiny_bert)
    _gate_some(gates)
    gates.attach(tiny_bert)
    assert (_logits(tiny_bert, tiny_batch) - dense).abs().max() > 1e-4
    gates.detach()
    torch.testing.assert_close(_logits(tiny_bert, tiny_batch), dense)


def test_sliced_artifact_is_smaller_and_reloads_the_same_logits(tiny_bert, tiny_batch, tokenizer, tmp_path):
    save_student(copy.deepcopy(tiny_bert), tmp_path / "dense", tokenizer)
    gates = HeadAndUnitGates(tiny_bert)
    _gate_some(gates)
    sliced = gates.materialize(tiny_bert)
    save_student(sliced, tmp_path / "sliced", tokenizer)
    assert artifact_bytes(tmp_path / "sliced") < artifact_bytes(tmp_path / "dense")
    reloaded = load_student(tmp_path / "sliced")
    assert [surgery.num_heads(reloaded, i) for i in range(4)] == [2, 4, 3, 4]
    torch.testing.assert_close(_logits(reloaded, tiny_batch), _logits(sliced, tiny_batch), atol=1e-6, rtol=0)


def test_uniform_ffn_pruning_reloads_with_plain_from_pretrained(tiny_bert, tiny_batch, tokenizer, tmp_path):
    """Same FFN width in every layer and all heads kept: HF's config can express the shape."""
    gates = HeadAndUnitGates(tiny_bert)
    gates.units[:, 1::2] = 0
    sliced = gates.materialize(tiny_bert)
    save_student(sliced, tmp_path / "ffn", tokenizer)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ffn")
    assert plain.config.intermediate_size == 32
    torch.testing.assert_close(_logits(plain, tiny_batch), _logits(sliced, tiny_batch), atol=1e-6, rtol=0)


def test_mpnet_heads_are_refused_before_training(tokenizer):
    """MPNet computes one relative-position bias per head for all layers: a sliced layer would not fit it."""
    config = tiny_encoder("mpnet", tokenizer.vocab_size).config
    with pytest.raises(ConfigError, match=r"student\.model_type.*mpnet.*heads can be removed from: bert"):
        HeadPruning.check_models(ModelConfigs(config, None), head_sparsity=0.5)
    HeadPruning.check_models(ModelConfigs(config, None), head_sparsity=0.0, ffn_sparsity=0.5)


def test_surgery_refuses_removing_every_head_or_unknown_ones(tiny_bert):
    with pytest.raises(ValueError, match="cannot remove all 4 heads"):
        surgery.prune_heads(tiny_bert, 0, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="heads 0..3"):
        surgery.prune_heads(tiny_bert, 0, [4])


# ---------------------------------------------------------------- importance and the rounds


def test_lowest_to_gate_skips_gated_entries_and_keeps_one_per_layer():
    importance = torch.tensor([[0.1, 0.2, 0.9], [0.05, 0.3, 0.4]])
    gates = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    assert lowest_to_gate(importance, gates, 2) == [(0, 0), (0, 1)]
    assert lowest_to_gate(importance, gates, 10) == [(0, 0), (0, 1), (1, 1)]  # one stays on in each layer


def test_layer_normalization_is_per_layer_l2():
    normalized = layer_normalized(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    torch.testing.assert_close(normalized, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_head_importance_is_the_gate_gradient_per_token(tiny_pair, tiny_batch):
    """Michel et al.'s I_h = |∂L/∂ξ_h|, checked against a central finite difference of the loss in ξ_h."""
    student, _ = tiny_pair
    technique = HeadPruning(**technique_kwargs(copy.deepcopy(student)), distill=False)
    technique.prepare()
    heads, units = technique.gate_gradients([tiny_batch])
    tokens = float(tiny_batch["attention_mask"].sum())

    def loss_at(gates, index, value):
        saved = float(gates[index])
        gates[index] = value
        logits = _logits(technique.student, tiny_batch)
        gates[index] = saved
        return torch.nn.functional.cross_entropy(logits, tiny_batch["labels"]).double()

    eps = 1e-3
    for gates, grad, index in ((technique.gates.heads, heads, (1, 2)), (technique.gates.units, units, (0, 7))):
        numeric = abs(loss_at(gates, index, 1 + eps) - loss_at(gates, index, 1 - eps)) / (2 * eps) / tokens
        assert float(grad[index]) == pytest.approx(float(numeric), rel=1e-2, abs=1e-7)
        assert float(grad[index]) > 0


def test_iterative_pruning_reaches_the_counts_in_rounds_and_exports_them(tiny_pair, tiny_batch):
    student, teacher = tiny_pair  # 2 layers x 4 heads, FFN 64
    technique = HeadPruning(**technique_kwargs(copy.deepcopy(student), teacher), head_sparsity=0.5,
                            ffn_sparsity=0.5, round_fraction=0.25)
    technique.prepare()
    rounds = technique.prune([tiny_batch])
    assert rounds == 2  # 4 of 8 heads at 2 per round; 64 of 128 units at 32 per round
    assert technique.gates.kept() == {"heads": 4.0, "units": 64.0}
    assert technique.gates.heads.sum(1).min() >= 1
    trainer = fit_steps(technique, tiny_batch, steps=2)  # fine-tunes with the gates fixed; no second pruning
    assert trainer.callback_metrics["prune/heads_kept"] == 4
    exported = technique.export_student()
    metrics = technique.compression_metrics()
    assert metrics["compress/heads_kept_fraction"] == 0.5 and metrics["compress/ffn_kept_fraction"] == 0.5
    assert sum(surgery.num_heads(exported, i) for i in range(2)) == 4


def test_the_least_important_head_goes_first(tiny_pair, tiny_batch):
    student, _ = tiny_pair
    technique = HeadPruning(**technique_kwargs(copy.deepcopy(student)), head_sparsity=0.125, distill=False)
    technique.prepare()
    importance = layer_normalized(technique.gate_gradients([tiny_batch])[0])
    technique.prune([tiny_batch])
    off = (technique.gates.heads == 0).nonzero().tolist()
    assert off == [list(divmod(int(importance.argmin()), 4))]


@pytest.mark.parametrize(
    "hparams, key",
    [
        ({"head_sparsity": 1.0}, "technique.head_sparsity"),
        ({"ffn_sparsity": -0.1}, "technique.ffn_sparsity"),
        ({"round_fraction": 0.0}, "technique.round_fraction"),
        ({"importance_examples": 0}, "technique.importance_examples"),
        ({"prune_at": 1.0}, "technique.prune_at"),
    ],
)
def test_bad_head_pruning_hparams_fail_naming_the_key(hparams, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        HeadPruning.check_hparams(**hparams)


def test_more_heads_than_can_go_fail_before_training(tiny_bert):
    """4 layers x 4 heads: at most 12 can go (each layer keeps one); 0.9 asks for 14."""
    with pytest.raises(ConfigError, match=r"technique\.head_sparsity.*at most 12 of the student's 16.*14 asked"):
        HeadPruning.check_models(ModelConfigs(tiny_bert.config, None), head_sparsity=0.9)
    HeadPruning.check_models(ModelConfigs(tiny_bert.config, None), head_sparsity=0.75)
    assert structure.head_size(tiny_bert) == 8
