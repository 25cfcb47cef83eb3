"""Structured movement pruning: a head's score gradient is Lagunas et al.'s block movement on its output
columns, each layer keeps its top-k heads and FFN blocks, the sliced export computes what the gated model
computes and (FFN only) reloads as a plain HF model, bad input fails on the config."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, MPNetConfig

from conftest import fit_steps, technique_kwargs
from slimnlp.artifacts import save_student
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure, surgery
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.ffn_pruning import FFNPruning


def _technique(model, **hparams):
    technique = FFNPruning(distill=False, **hparams, **technique_kwargs(model))
    technique.prepare()
    return technique


def test_a_head_score_gradient_is_the_block_movement_of_its_output_columns(tiny_bert, tiny_batch):
    technique = _technique(tiny_bert, head_sparsity=0.5)
    loss = technique.training_loss(tiny_batch)["loss"]  # ramp at 0: every gate is 1, W' = W
    loss.backward()
    size = structure.head_size(tiny_bert)
    for layer, block in enumerate(structure.encoder_layers(tiny_bert)):
        out = block.get_submodule(structure.layer_parts(tiny_bert).attention_out).weight
        movement = (out.grad * out.detach()).view(out.shape[0], -1, size).sum(dim=(0, 2))
        torch.testing.assert_close(technique.head_scores.grad[layer], movement, atol=1e-6, rtol=1e-4)


def test_each_layer_keeps_its_top_k_and_the_export_is_the_gated_model(tiny_bert, tiny_batch):
    torch.manual_seed(0)
    technique = FFNPruning(distill=False, head_sparsity=0.5, ffn_sparsity=0.75, ffn_block=8,
                           **technique_kwargs(tiny_bert))
    fit_steps(technique, tiny_batch, 5)  # scores move apart
    technique.ramp_fraction.fill_(1.0)
    technique.eval()
    with torch.no_grad():
        gated = technique(tiny_batch)
    assert technique.gates.heads.sum(1).tolist() == [2.0] * 4  # 4 heads per layer, half kept
    assert technique.gates.units.sum(1).tolist() == [16.0] * 4  # 8 blocks of 8 units, a quarter kept
    for layer in range(4):  # the kept blocks are each layer's highest scores
        kept = technique.gates.units[layer].view(-1, 8)[:, 0] == 1
        assert technique.unit_scores[layer][kept].min() >= technique.unit_scores[layer][~kept].max()
    student = technique.export_student()
    assert [surgery.num_heads(student, i) for i in range(4)] == [2] * 4
    assert [surgery.ffn_width(student, i) for i in range(4)] == [16] * 4
    assert technique.compression_metrics()["compress/ffn_kept_fraction"] == 0.25
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(**model_inputs(tiny_batch)).logits, gated, atol=1e-5, rtol=1e-5)


def test_an_ffn_only_cut_reloads_as_a_plain_hf_model(tiny_bert, tiny_batch, tmp_path):
    technique = _technique(tiny_bert, ffn_sparsity=0.5, ffn_block=4)
    technique.unit_scores.data.normal_()
    technique.ramp_fraction.fill_(1.0)
    student = technique.export_student()
    save_student(student, tmp_path / "cut")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cut").eval()
    assert plain.config.intermediate_size == 32
    with torch.no_grad():
        torch.testing.assert_close(plain(**model_inputs(tiny_batch)).logits,
                                   student.eval()(**model_inputs(tiny_batch)).logits)


@pytest.mark.parametrize(
    ("hparams", "key", "allowed"),
    [({"ffn_block": 5}, "technique.ffn_block", "divisor of the student's FFN width 64"),
     ({"head_sparsity": 0.9}, "technique.head_sparsity", "each layer keeps one of its 4 heads")],
)
def test_blocks_that_do_not_tile_and_too_many_heads_fail_on_the_config(tiny_bert, hparams, key, allowed):
    with pytest.raises(ConfigError, match=rf"{key}.*{allowed}"):
        FFNPruning.check_models(ModelConfigs(tiny_bert.config, None), **hparams)


def test_mpnet_heads_are_refused_but_its_ffn_units_are_not(tokenizer):
    config = MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ConfigError, match="student.model_type"):
        FFNPruning.check_models(ModelConfigs(config, None), head_sparsity=0.5)
    FFNPruning.check_models(ModelConfigs(config, None), ffn_sparsity=0.5)


def test_bad_hparams_name_the_key():
    for hparams, key in (({"ffn_sparsity": 1.0}, "ffn_sparsity"), ({"ffn_block": 0}, "ffn_block"),
                         ({"score_lr": 0.0}, "score_lr")):
        with pytest.raises(ConfigError, match=rf"technique\.{key}"):
            FFNPruning.check_hparams(**hparams)
