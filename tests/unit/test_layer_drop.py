"""LayerDrop and layer pruning: the Every Other choice is the paper's, each training pass drops layers at the
rate and only their parameters go without gradient, validation runs the depth that is exported, the cut model
is a plain HF checkpoint, bad input fails early."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from conftest import technique_kwargs, tiny_encoder
from slimnlp.artifacts import artifact_bytes, save_student
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure, surgery
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.layer_drop import DropLayers, LayerDrop, every_other


def _logits(model, batch):
    with torch.no_grad():
        return model.eval()(**model_inputs(batch)).logits


def _paper_rule(num_layers: int, depth: int) -> list[int]:
    """Fan et al.: prune layers at (1-indexed) depth d with d ≡ 0 (mod ⌊1/p⌋), p = 1 − depth/N."""
    every = int(1 / (1 - depth / num_layers) + 1e-9)
    return [d - 1 for d in range(1, num_layers + 1) if d % every == 0]


def test_every_other_is_fairseqs_choice_and_the_papers_rule_wherever_it_is_defined():
    assert [i for i in range(16) if i not in every_other(16, 8)] == [0, 2, 4, 6, 8, 10, 12, 14]  # fairseq README
    assert every_other(6, 4) == [2, 5] and every_other(6, 6) == []
    for num_layers in range(2, 13):
        for depth in range(1, num_layers):
            dropped = every_other(num_layers, depth)
            assert len(set(dropped)) == num_layers - depth and set(dropped) <= set(range(num_layers))
            if num_layers % (num_layers - depth) == 0:
                assert dropped == _paper_rule(num_layers, depth), (num_layers, depth)
    assert every_other(6, 2) == [1, 2, 4, 5]  # p = 2/3: the rule drops all, spreading keeps layers 0 and 3


def _layers_run(technique, batch, passes: int) -> list[list[bool]]:
    ran: list[bool] = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
             for i, layer in enumerate(structure.encoder_layers(technique.student))]
    runs = []
    for _ in range(passes):
        ran.clear()
        technique(batch)
        runs.append([i in ran for i in range(structure.num_layers(technique.student))])
    for hook in hooks:
        hook.remove()
    return runs


def test_training_passes_drop_each_layer_at_the_rate_and_evaluation_runs_the_kept_ones(tiny_bert, tiny_batch):
    torch.manual_seed(0)
    technique = LayerDrop(rate=0.3, depth=2, distill=False, **technique_kwargs(tiny_bert))
    runs = torch.tensor(_layers_run(technique.train(), tiny_batch, 400), dtype=torch.float)
    assert 1 - runs.mean() == pytest.approx(0.3, abs=0.03)  # 1600 independent draws: 4.5 standard errors
    assert runs.mean(0).std() < 0.05  # every layer alike
    assert len({tuple(r) for r in runs.tolist()}) > 8  # a fresh draw per pass
    assert _layers_run(technique.eval(), tiny_batch, 3) == [[True, False, True, False]] * 3  # Every Other 4 → 2


def test_a_dropped_layer_gets_no_gradient_and_the_others_do(tiny_bert, tiny_batch):
    technique = LayerDrop(rate=0.5, distill=False, **technique_kwargs(tiny_bert)).train()
    for seed in range(20):  # the first draw that drops some layers and keeps some
        torch.manual_seed(seed)
        (ran,) = _layers_run(technique, tiny_batch, 1)
        if 0 < sum(ran) < 4:
            break
    torch.manual_seed(seed)  # the same draw again, now with backward
    technique.training_loss(tiny_batch)["loss"].backward()
    for layer, used in zip(structure.encoder_layers(technique.student), ran):
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads) if used else all(g is None for g in grads)
    assert LayerDrop.requirements(rate=0.2).find_unused_parameters and not LayerDrop.requirements(rate=0.0).find_unused_parameters


def test_validation_runs_the_exported_model_and_the_export_reloads_as_plain_hf(tiny_bert, tiny_batch, tmp_path):
    technique = LayerDrop(prune_layers=[0, 3], distill=False, **technique_kwargs(tiny_bert)).eval()
    full = _logits(tiny_bert, tiny_batch)
    validated = technique(tiny_batch).detach()
    exported = technique.export_student()
    assert structure.num_layers(exported) == exported.config.num_hidden_layers == 2
    assert technique.compression_metrics() == {"compress/layers_kept": 2.0}
    torch.testing.assert_close(_logits(exported, tiny_batch), validated)
    assert (validated - full).abs().max() > 1e-5  # two layers fewer is another function
    save_student(exported, tmp_path / "cut")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cut")
    torch.testing.assert_close(_logits(plain, tiny_batch), validated)
    torch.testing.assert_close(technique(tiny_batch).detach(), validated)  # after export: the cut student as is


@pytest.mark.parametrize("kind", ["distilbert", "mpnet"])
def test_lent_layers_equal_the_cut_model_in_other_families(kind, tokenizer, tiny_batch, tmp_path):
    model = tiny_encoder(kind, tokenizer.vocab_size).eval()
    layers = structure.encoder_layers(model)
    with structure.lent_layers(model, torch.nn.ModuleList([layers[1], layers[2]])):
        lent = _logits(model, tiny_batch)
    surgery.keep_layers(model, [1, 2])
    torch.testing.assert_close(_logits(model, tiny_batch), lent)
    save_student(model, tmp_path / kind)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / kind).config.num_hidden_layers == 2


def test_drop_layers_cuts_a_trained_model_without_training(tiny_bert, tiny_batch, tmp_path):
    save_student(tiny_bert, tmp_path / "full")
    layer_bytes = 4 * sum(p.numel() for p in structure.encoder_layers(tiny_bert)[0].parameters())
    technique = DropLayers(depth=2, **technique_kwargs(tiny_bert))
    assert not DropLayers.requirements().trains
    reference = LayerDrop(depth=2, distill=False, **technique_kwargs(tiny_bert)).eval()
    expected = reference(tiny_batch).detach()
    assert technique.compress([]) == {"compress/layers_kept": 2.0}
    torch.testing.assert_close(_logits(technique.student, tiny_batch), expected)  # the same Every Other layers
    save_student(technique.student, tmp_path / "cut")
    removed = artifact_bytes(tmp_path / "full") - artifact_bytes(tmp_path / "cut")
    assert 2 * layer_bytes <= removed < 2 * layer_bytes + 4096  # two fp32 layers (and their header entries)
    assert F.kl_div(expected.log_softmax(-1), _logits(tiny_bert, tiny_batch).softmax(-1), reduction="sum") > 0


@pytest.mark.parametrize(
    ("hparams", "key", "allowed"),
    [
        ({"rate": 1.0}, "technique.rate", r"\[0, 1\)"),
        ({"depth": 0}, "technique.depth", "positive"),
        ({"depth": 2, "prune_layers": [1]}, "technique.prune_layers", "one or the other"),
        ({"prune_layers": [1, 1]}, "technique.prune_layers", "distinct"),
        ({"prune_layers": "0,1"}, "technique.prune_layers", "distinct layer indices"),
    ],
)
def test_bad_layer_drop_hparams_name_the_key(hparams, key, allowed):
    with pytest.raises(ConfigError, match=rf"{key}.*{allowed}"):
        LayerDrop.check_hparams(**hparams)


@pytest.mark.parametrize(
    ("hparams", "key", "allowed"),
    [
        ({"depth": 5}, "technique.depth", "at most the student's 4"),
        ({"prune_layers": [0, 4]}, "technique.prune_layers", r"0\.\.3"),
        ({"prune_layers": [0, 1, 2, 3]}, "technique.prune_layers", "fewer than all 4"),
    ],
)
def test_cuts_that_do_not_fit_the_student_fail_on_its_config(tiny_bert, hparams, key, allowed):
    for technique in (LayerDrop, DropLayers):
        with pytest.raises(ConfigError, match=rf"{key}.*{allowed}"):
            technique.check_models(ModelConfigs(tiny_bert.config, None), **hparams)


def test_drop_layers_needs_a_depth():
    with pytest.raises(ConfigError, match=r"technique\.depth.*layers to keep"):
        DropLayers.check_hparams()
