"""pkd, distilbert, minilm, minilm_v2: one real step each, zero loss against an identical teacher, layer maps,
and the refusals (widths, heads, relation heads, nothing captured)."""

from __future__ import annotations

import copy
import inspect
import logging
from contextlib import contextmanager

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch import nn

from conftest import REPO_ROOT, fit_steps, technique_kwargs
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models.capture import QKV
from slimnlp.models.loading import set_attention_implementation
from slimnlp.models.structure import encoder_layers
from slimnlp.models.students import distilbert_layer_map, layer_subset, resized
from slimnlp.techniques import minilm as minilm_module
from slimnlp.techniques.distilbert import DistilBERT
from slimnlp.techniques.minilm import MiniLM, MiniLMv2, captured
from slimnlp.techniques.pkd import PatientKD, pkd_layer_map

# name -> (class, hparams besides alpha/temperature, the technique's own loss components)
TECHNIQUES = {
    "pkd_skip": (PatientKD, {"strategy": "skip", "beta": 2.0}, ("loss/pkd",)),
    "pkd_last": (PatientKD, {"strategy": "last", "beta": 2.0}, ("loss/pkd",)),
    "distilbert": (DistilBERT, {"cosine_weight": 2.0}, ("loss/cos",)),
    "minilm": (MiniLM, {"beta": 2.0}, ("loss/attn_kl", "loss/value_kl")),
    "minilm_v2": (MiniLMv2, {"beta": 2.0, "relation_heads": 8}, ("loss/qq", "loss/kk", "loss/vv")),
}
YAMLS = {"pkd": PatientKD, "distilbert": DistilBERT, "minilm": MiniLM, "minilm_v2": MiniLMv2}


@pytest.fixture()
def teacher(tiny_bert):
    """tiny_bert with sharper attention. BERT's init (std 0.02) gives a 32-wide model almost flat attention, on
    which every attention/relation loss is ~1e-8 even between different models: a "zero" test would prove
    nothing. Larger Q/K/V weights make the maps (and so the losses) differ by orders of magnitude."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in encoder_layers(tiny_bert):
            attention = layer.attention.self
            for proj in (attention.query, attention.key, attention.value):
                proj.weight.normal_(std=0.5)
    return tiny_bert


@pytest.fixture()
def pair(teacher):
    """(student, teacher): the sharpened teacher and a 2-layer student cut from its layers 1 and 3."""
    return layer_subset(teacher, 3, num_layers=2, init="skip"), teacher


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


def _eval_losses(technique, batch):
    technique.eval()
    with torch.no_grad():
        return technique.training_loss(batch)


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_one_step_trains_student_with_named_losses(pair, tiny_batch, name):
    cls, hparams, own = TECHNIQUES[name]
    student, teacher = pair
    technique = cls(alpha=0.3, temperature=2.0, **hparams, **technique_kwargs(student, teacher))
    before_S, before_T = _snapshot(student), _snapshot(teacher)
    logged = fit_steps(technique, tiny_batch, steps=1).callback_metrics
    for key in ("train/loss", "loss/ce", "loss/kd", *own):
        assert torch.isfinite(logged[key]), key
    for key in own:  # a cut student differs from its teacher: a zero here would mean nothing was compared
        assert logged[key] > 1e-3, key
    expected = 0.3 * logged["loss/ce"] + 0.7 * logged["loss/kd"] + 2.0 * sum(logged[k] for k in own)
    assert logged["train/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert _changed(before_S, student), "the student did not train"
    assert not _changed(before_T, teacher), "the teacher must stay frozen"
    assert not teacher.training


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_losses_vanish_when_the_student_is_the_teacher(teacher, tiny_batch, name):
    cls, hparams, own = TECHNIQUES[name]
    technique = cls(**hparams, **technique_kwargs(copy.deepcopy(teacher), teacher))
    losses = _eval_losses(technique, tiny_batch)
    for key in ("loss/kd", *own):
        assert losses[key].item() == pytest.approx(0.0, abs=1e-6), key


def test_pkd_layer_maps_follow_the_paper():
    assert pkd_layer_map(2, 4, "skip") == [1]
    assert pkd_layer_map(2, 4, "last") == [2]
    assert pkd_layer_map(6, 12, "skip") == [1, 3, 5, 7, 9]  # teacher layers {2,4,6,8,10}, 1-based
    assert pkd_layer_map(6, 12, "last") == [6, 7, 8, 9, 10]  # teacher layers {7,...,11}, 1-based
    assert pkd_layer_map(3, 12, "last") == [
        9,
        10,
    ]  # the authors' run_student_patience.py: fc_layer_idx '9,10'


@pytest.mark.parametrize("strategy, expected", [("skip", [1]), ("last", [2])])
def test_pkd_derives_and_logs_the_4_to_2_map(pair, caplog, strategy, expected):
    student, teacher = pair
    with caplog.at_level(logging.INFO, logger="slimnlp.techniques.pkd"):
        technique = PatientKD(strategy=strategy, **technique_kwargs(student, teacher))
    assert technique.layer_map == expected
    assert f"teacher layer -> student layer: {expected[0]} -> 0" in caplog.text


def test_pkd_layer_map_override(pair):
    student, teacher = pair
    assert PatientKD(layer_map=[0], **technique_kwargs(student, teacher)).layer_map == [0]
    for bad in ([0, 1], [4]):
        with pytest.raises(ConfigError, match="technique.layer_map"):
            PatientKD(layer_map=bad, **technique_kwargs(student, teacher))


def test_pkd_needs_two_student_layers(teacher):
    student = layer_subset(teacher, 3, num_layers=1)
    with pytest.raises(ConfigError, match="student.num_layers"):
        PatientKD(**technique_kwargs(student, teacher))


@pytest.mark.parametrize("cls, hparams", [(PatientKD, {}), (DistilBERT, {"cosine_weight": 0.1})])
def test_hidden_state_losses_refuse_other_widths(teacher, cls, hparams):
    student = resized(teacher, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    with pytest.raises(ConfigError, match="student.hidden_size.*technique=tinybert"):
        cls(**hparams, **technique_kwargs(student, teacher))


def test_distilbert_default_is_the_task_specific_recipe(teacher, tiny_batch):
    """alpha_ce·KD + alpha_task·CE only (run_squad_w_distillation.py): logits alone, so a student of any width
    distils and the teacher-logit cache may serve it."""
    assert DistilBERT.requirements().cacheable_teacher_logits and not DistilBERT.requirements().hidden_states
    assert DistilBERT.requirements(cosine_weight=0.1).hidden_states
    student = resized(teacher, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    technique = DistilBERT(**technique_kwargs(student, teacher))
    losses = _eval_losses(technique, tiny_batch)
    assert "loss/cos" not in losses
    assert losses["loss"].item() == pytest.approx(0.5 * losses["loss/ce"].item() + 0.5 * losses["loss/kd"].item())
    with pytest.raises(ConfigError, match="technique.cosine_weight"):
        DistilBERT.check_hparams(cosine_weight=-1.0)


def test_distilbert_student_init_is_the_authors_layer_spread(teacher):
    assert distilbert_layer_map(6, 12) == [0, 2, 4, 7, 9, 11]  # extract_distilbert.py
    assert distilbert_layer_map(3, 6) == [0, 3, 5] and distilbert_layer_map(2, 4) == [0, 3]
    assert distilbert_layer_map(1, 4) == [0]
    student = layer_subset(teacher, 3, num_layers=2, init="distilbert")
    assert student.config.slimnlp_layer_map == [0, 3]
    for s, t in enumerate([0, 3]):
        assert torch.equal(encoder_layers(student)[s].output.dense.weight, encoder_layers(teacher)[t].output.dense.weight)


def test_minilm_attention_is_taken_before_attention_dropout(teacher, tiny_batch):
    """HF returns attention maps after dropout; MiniLM's A = softmax(QKᵀ/√d) is before it. A training
    student identical to the teacher except for dropout on its last layer's attention (which changes that
    layer's output, not its Q/K/V) must show no attention loss."""
    student = copy.deepcopy(teacher)
    for module in student.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    encoder_layers(student)[-1].attention.self.dropout.p = 0.5
    technique = MiniLM(**technique_kwargs(student, teacher))
    technique.train()
    torch.manual_seed(0)
    with torch.no_grad():
        losses = technique.training_loss(tiny_batch)
        set_attention_implementation(student, "eager")
        hf_maps = student(**model_inputs(tiny_batch), output_attentions=True).attentions[-1]
    assert losses["loss/attn_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss/value_kl"].item() == pytest.approx(0.0, abs=1e-6)
    valid = tiny_batch["attention_mask"].bool()[:, None, None, :].expand_as(hf_maps)
    assert (hf_maps[valid] == 0).any(), "HF's maps carry dropout zeros: the reason they are not used"


@pytest.mark.parametrize("cls, hparams", [(MiniLM, {}), (MiniLMv2, {"relation_heads": 8})])
def test_minilm_loss_is_the_same_under_sdpa_and_eager(pair, tiny_batch, cls, hparams):
    student, teacher = pair
    assert teacher.config._attn_implementation == "sdpa"  # the fixture's default: HF attentions would be ()
    technique = cls(**hparams, **technique_kwargs(student, teacher))
    sdpa = _eval_losses(technique, tiny_batch)
    for model in (student, teacher):
        set_attention_implementation(model, "eager")
    eager = _eval_losses(technique, tiny_batch)
    for key, value in sdpa.items():
        torch.testing.assert_close(value, eager[key], rtol=1e-4, atol=1e-6)
    assert all(
        value > 1e-3 for key, value in sdpa.items() if key.startswith(("loss/attn", "loss/value", "loss/qq"))
    )


def test_minilm_refuses_to_compute_on_nothing(pair, tiny_batch, monkeypatch):
    student, teacher = pair
    technique = MiniLM(**technique_kwargs(student, teacher))

    @contextmanager
    def captures_nothing(model, layers=None):
        yield {}

    monkeypatch.setattr(minilm_module, "capture_qkv", captures_nothing)
    with pytest.raises(RuntimeError, match="computed on nothing"):
        technique.training_loss(tiny_batch)
    empty = torch.empty(2, 4, 0, 8)
    with pytest.raises(RuntimeError, match="teacher's encoder layer 3"):
        captured({3: QKV(empty, empty, empty)}, 3, "teacher")


def test_minilm_v1_needs_equal_heads_but_not_equal_widths(teacher, tiny_batch):
    two_heads = resized(teacher, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    with pytest.raises(ConfigError, match="student.num_attention_heads.*minilm_v2"):
        MiniLM(**technique_kwargs(two_heads, teacher))
    narrow = resized(teacher, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    losses = MiniLM(**technique_kwargs(narrow, teacher)).training_loss(tiny_batch)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_minilm_v2_distils_across_head_counts_and_widths(teacher, tiny_batch):
    student = resized(teacher, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    technique = MiniLMv2(relation_heads=4, **technique_kwargs(student, teacher))
    losses = technique.training_loss(tiny_batch)
    losses["loss"].backward()
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert student.classifier.weight.grad is not None
    with pytest.raises(ConfigError, match="technique.relation_heads.*student 16, teacher 32"):
        MiniLMv2(relation_heads=32, **technique_kwargs(student, teacher))


def test_minilm_v2_teacher_layer_picks_the_layer(teacher, tiny_batch):
    """A student made of the teacher's bottom 3 layers reproduces teacher layer 2 exactly (= -2)."""
    student = layer_subset(teacher, 3, num_layers=3, init="first")
    technique = MiniLMv2(relation_heads=8, teacher_layer=-2, **technique_kwargs(student, teacher))
    assert technique.teacher_layer == 2
    losses = _eval_losses(technique, tiny_batch)
    for key in ("loss/qq", "loss/kk", "loss/vv"):
        assert losses[key].item() == pytest.approx(0.0, abs=1e-6), key
    last = MiniLMv2(relation_heads=8, **technique_kwargs(student, teacher))
    assert _eval_losses(last, tiny_batch)["loss/qq"] > 1e-3
    for bad in (4, -5):
        with pytest.raises(ConfigError, match="technique.teacher_layer"):
            MiniLMv2(relation_heads=8, teacher_layer=bad, **technique_kwargs(student, teacher))


@pytest.mark.parametrize(
    "cls, hparams, key",
    [
        (PatientKD, {"alpha": 1.5}, "alpha"),
        (PatientKD, {"temperature": 0.0}, "temperature"),
        (PatientKD, {"beta": -1.0}, "beta"),
        (PatientKD, {"strategy": "first"}, "strategy"),
        (PatientKD, {"layer_map": [-1]}, "layer_map"),
        (DistilBERT, {"alpha": -0.1}, "alpha"),
        (DistilBERT, {"cosine_weight": -0.5}, "cosine_weight"),
        (MiniLM, {"temperature": -1.0}, "temperature"),
        (MiniLM, {"beta": -1.0}, "beta"),
        (MiniLMv2, {"relation_heads": 0}, "relation_heads"),
        (MiniLMv2, {"relation_heads": 2.5}, "relation_heads"),
        (MiniLMv2, {"teacher_layer": "last"}, "teacher_layer"),
    ],
)
def test_bad_hparams_are_refused_before_any_model(cls, hparams, key):
    with pytest.raises(ConfigError, match=f"technique.{key}"):
        cls.check_hparams(**hparams)


@pytest.mark.parametrize("name", list(YAMLS))
def test_yaml_targets_the_class_with_its_defaults(name):
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "technique" / f"{name}.yaml")
    cls = get_class(cfg._target_)
    assert cls is YAMLS[name]
    hparams = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if k != "base"}
    assert hparams == defaults, "the YAML and the constructor defaults drifted apart"
    cls.check_hparams(**hparams)
    needs = cls.requirements(**cls.defaults_filled(**hparams))
    # DistilBERT's task-specific default reads logits only; the others read hidden states or attention
    assert needs.teacher and needs.cacheable_teacher_logits == (name == "distilbert")


def test_pkd_beta_lives_on_the_authors_mean_scale(pair, tiny_batch):
    """loss/pkd is patience_loss of the authors' src/KD_loss.py: F.mse_loss of the normalized [CLS] states stacked
    over (batch, layers, hidden), so beta=100 means their beta at any depth or width."""
    student, teacher = pair
    technique = PatientKD(**technique_kwargs(student, teacher))
    assert technique.beta == 100.0
    losses = _eval_losses(technique, tiny_batch)
    inputs = {k: tiny_batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        h_S = student(**inputs, output_hidden_states=True).hidden_states
        h_T = teacher(**inputs, output_hidden_states=True).hidden_states
    s_stack = torch.stack([h_S[s + 1][:, 0] for s in range(len(technique.layer_map))], dim=1)
    t_stack = torch.stack([h_T[t + 1][:, 0] for t in technique.layer_map], dim=1)
    reference = torch.nn.functional.mse_loss(
        torch.nn.functional.normalize(s_stack, p=2, dim=2), torch.nn.functional.normalize(t_stack, p=2, dim=2)
    )
    assert losses["loss/pkd"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(
        0.5 * losses["loss/ce"].item() + 0.5 * losses["loss/kd"].item() + 100.0 * reference.item(), rel=1e-5
    )
