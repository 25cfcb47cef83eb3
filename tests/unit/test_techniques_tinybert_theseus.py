"""tinybert and theseus: one real Lightning step each on tiny models, plus the properties each paper relies on
(zero attention loss for an identical student, a projection that trains but is not exported, replacement
rates that are the reference schedulers', a compound model that is the teacher at p=0 and the successor model
at p=1)."""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import slimnlp.techniques.tinybert as tinybert_module
from conftest import fit_steps, technique_kwargs
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.models.loading import set_attention_implementation
from slimnlp.models.students import layer_subset, resized
from slimnlp.modules.theseus import compound_layers, sample_replacement
from slimnlp.techniques.theseus import BertOfTheseus
from slimnlp.techniques.tinybert import TinyBERT


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


def _no_dropout(*models: nn.Module) -> None:
    """Dropout off while the modules stay in train mode (the compound's train path stays in use)."""
    for model in models:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0


# ------------------------------------------------------------------------------------------------ TinyBERT
def test_tinybert_intermediate_step_trains_layers_not_classifier(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    technique = TinyBERT(stage="intermediate", **technique_kwargs(student, teacher))
    assert technique.proj is None  # equal widths: identity
    before_S, before_T = _snapshot(student), _snapshot(teacher)
    logged = fit_steps(technique, tiny_batch, steps=2).callback_metrics
    for name in ("train/loss", "loss/emb", "loss/hidden", "loss/attn"):
        assert torch.isfinite(logged[name]) and logged[name] > 0, name
    total = logged["loss/emb"] + logged["loss/hidden"] + logged["loss/attn"]
    assert logged["train/loss"].item() == pytest.approx(total.item(), rel=1e-5)
    changed = _changed(before_S, student)
    assert any(".encoder.layer." in k for k in changed), "the student's layers did not train"
    assert not any(k.startswith(("classifier.", "bert.pooler.")) for k in changed), "the head got a gradient"
    assert not _changed(before_T, teacher), "the teacher must stay frozen"


def test_tinybert_prediction_step(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    technique = TinyBERT(
        stage="prediction", temperature=2.0, alpha=0.25, **technique_kwargs(student, teacher)
    )
    assert technique.needs.cacheable_teacher_logits  # the runner may serve the teacher's logits from its cache
    before_S, before_T = _snapshot(student), _snapshot(teacher)
    logged = fit_steps(technique, tiny_batch, steps=2).callback_metrics
    assert torch.isfinite(logged["loss/pred"]) and torch.isfinite(logged["loss/ce"])
    expected = 0.25 * logged["loss/ce"] + 0.75 * logged["loss/pred"]
    assert logged["train/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert any(k.startswith("classifier.") for k in _changed(before_S, student))
    assert not _changed(before_T, teacher)


def test_tinybert_projection_trains_and_is_not_exported(tiny_bert, tiny_batch):
    teacher = tiny_bert
    student = resized(teacher, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    technique = TinyBERT(stage="intermediate", **technique_kwargs(student, teacher))
    assert isinstance(technique.proj, nn.Linear)
    assert (technique.proj.in_features, technique.proj.out_features) == (16, 32)
    assert any(p is technique.proj.weight for _, p in technique.trainable_parameters())
    assert any(k.startswith("proj.") for k in technique.state_dict()), "W_h must be checkpointed"
    proj_before = technique.proj.weight.detach().clone()
    logged = fit_steps(technique, tiny_batch, steps=1).callback_metrics
    assert all(torch.isfinite(logged[k]) for k in ("loss/emb", "loss/hidden", "loss/attn"))
    assert not torch.equal(proj_before, technique.proj.weight), "W_h did not train"
    exported = technique.export_student()
    assert exported is student and structure.hidden_size(exported) == 16
    assert not any("proj" in k for k in exported.state_dict())


def test_tinybert_losses_vanish_for_a_copy_of_the_teacher(tiny_bert, tiny_batch):
    technique = TinyBERT(stage="intermediate", **technique_kwargs(copy.deepcopy(tiny_bert), tiny_bert))
    assert technique.layer_map == [0, 1, 2, 3]
    technique.eval()  # dropout off: the copy computes exactly what the teacher does
    with torch.no_grad():
        losses = technique.training_loss(tiny_batch)
    for name in ("loss/emb", "loss/hidden", "loss/attn"):
        assert losses[name].item() == pytest.approx(0.0, abs=1e-10), name
    # ... and the attention term is a real comparison: perturbing one student query projection moves it.
    with torch.no_grad():
        structure.encoder_layers(technique.student)[0].attention.self.query.weight.mul_(1.5)
        assert technique.training_loss(tiny_batch)["loss/attn"] > 0


def test_tinybert_refuses_an_attention_loss_on_nothing(tiny_pair, tiny_batch, monkeypatch):
    @contextmanager
    def captures_nothing(model, layers=None):
        yield {}

    monkeypatch.setattr(tinybert_module, "capture_qkv", captures_nothing)
    student, teacher = tiny_pair
    technique = TinyBERT(stage="intermediate", **technique_kwargs(student, teacher))
    with pytest.raises(RuntimeError, match="no attention scores captured"):
        technique.training_loss(tiny_batch)


def test_tinybert_scores_do_not_need_eager_attention(tiny_pair, tiny_batch):
    """Q/K hooks see the same scores under sdpa (the runner's default) as under eager attention."""
    student, teacher = tiny_pair
    losses = {}
    for impl in ("eager", "sdpa"):
        for model in (student, teacher):
            set_attention_implementation(model, impl)
        technique = TinyBERT(stage="intermediate", **technique_kwargs(student, teacher)).eval()
        with torch.no_grad():
            losses[impl] = technique.training_loss(tiny_batch)["loss/attn"].item()
    assert losses["sdpa"] > 0
    assert losses["sdpa"] == pytest.approx(losses["eager"], rel=1e-5)


def test_tinybert_layer_map_derived_overridable_and_logged(tiny_pair, caplog):
    student, teacher = tiny_pair
    with caplog.at_level(logging.INFO, logger="slimnlp.techniques.tinybert"):
        technique = TinyBERT(stage="intermediate", **technique_kwargs(student, teacher))
    assert technique.layer_map == [1, 3]  # uniform, top-aligned: g(m) = m * L_T / L_S
    assert "teacher layer -> student layer: embeddings->embeddings, 1->0, 3->1" in caplog.text
    assert TinyBERT(
        stage="intermediate", layer_map=[0, 2], **technique_kwargs(student, teacher)
    ).layer_map == [0, 2]
    for bad in ([0], [0, 4]):
        with pytest.raises(ConfigError, match="technique.layer_map"):
            TinyBERT(stage="intermediate", layer_map=bad, **technique_kwargs(student, teacher))


def test_tinybert_needs_matching_heads(tiny_bert):
    student = resized(tiny_bert, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    with pytest.raises(ConfigError, match="student.num_attention_heads"):
        TinyBERT(stage="intermediate", **technique_kwargs(student, tiny_bert))


def test_tinybert_stages():
    both = TinyBERT.stages(stage="both", intermediate_epochs=10, prediction_epochs=3)
    assert [(s.name, dict(s.hparams), s.max_epochs, s.select_best) for s in both] == [
        ("intermediate", {"stage": "intermediate"}, 10, False),
        ("prediction", {"stage": "prediction"}, 3, True),
    ]
    (only,) = TinyBERT.stages(stage="intermediate")
    assert (only.name, only.max_epochs, only.select_best) == ("intermediate", None, False)
    (only,) = TinyBERT.stages(stage="prediction", prediction_epochs=2)
    assert (only.name, only.max_epochs, only.select_best) == ("prediction", 2, True)


@pytest.mark.parametrize(
    "hparams, key",
    [
        ({"stage": "general"}, "stage"),
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"layer_map": [-1, 2]}, "layer_map"),
        ({"layer_map": []}, "layer_map"),
        ({"intermediate_epochs": 0}, "intermediate_epochs"),
        ({"prediction_epochs": 1.5}, "prediction_epochs"),
    ],
)
def test_tinybert_rejects_bad_hparams_before_any_model(hparams, key):
    with pytest.raises(ConfigError, match=f"technique.{key}"):
        TinyBERT.check_hparams(**hparams)


def test_tinybert_both_is_for_the_runner(tiny_pair):
    with pytest.raises(ConfigError, match="technique.stage"):
        TinyBERT(stage="both", **technique_kwargs(*tiny_pair))


# ----------------------------------------------------------------------------------------- BERT-of-Theseus
def _reference_linear(b: float, k: float, steps: int) -> list[float]:
    """The reference's LinearReplacementScheduler as run_glue.py drives it: rate b set at construction, then
    ``step()`` after every optimizer step sets min(k * counter + b, 1); the rate each step trains with."""
    rates, rate = [], b
    for counter in range(1, steps + 1):
        rates.append(rate)
        rate = min(k * counter + b, 1.0)
    return rates


def _reference_constant(p: float, replacing_steps: int, steps: int) -> list[float]:
    """The reference's ConstantReplacementScheduler likewise: p until the counter reaches replacing_steps."""
    rates, rate = [], p
    for counter in range(1, steps + 1):
        rates.append(rate)
        if counter >= replacing_steps:
            rate = 1.0
    return rates


def test_theseus_step_trains_only_the_successor_layers(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    before_T = _snapshot(teacher)
    technique = BertOfTheseus(scheduler="constant", replacing_rate=0.5, **technique_kwargs(student, teacher))
    assert not any(k.startswith("_predecessors") for k in technique.state_dict())  # like the teacher
    before_S = _snapshot(student)
    logged = fit_steps(technique, tiny_batch, steps=3).callback_metrics
    assert torch.isfinite(logged["loss/ce"])
    assert logged["theseus/replace_rate"].item() == pytest.approx(0.5)
    changed = _changed(before_S, student)
    assert changed and all(".encoder.layer." in k for k in changed), "only successor layers may train"
    assert not _changed(before_T, teacher), "the runner's teacher must not change"
    assert teacher.training is False and all(p.requires_grad is False for p in teacher.parameters())
    # Embeddings, pooler and classifier are the (frozen) teacher's, shared with the successor model.
    shared_T = teacher.state_dict()
    for key, value in student.state_dict().items():
        if ".encoder.layer." not in key:
            assert torch.equal(value, shared_T[key]), key


@pytest.mark.parametrize("b, k", [(0.3, 0.0006), (0.0, 0.1), (0.5, 0.25), (0.3, 0.07), (1.0, 0.01)])
def test_theseus_linear_rate_is_the_reference_formula(tiny_pair, b, k):
    student, teacher = tiny_pair
    technique = BertOfTheseus(replacing_rate=b, scheduler_linear_k=k, **technique_kwargs(student, teacher))
    steps = 2000 if k < 0.01 else 40
    ours = [technique.replace_rate(t) for t in range(steps)]
    assert ours == pytest.approx([min(1.0, k * t + b) for t in range(steps)])
    assert ours == pytest.approx(_reference_linear(b, k, steps))
    # a fixed slope: the rate does not depend on how long the run is
    full = technique.replacement.successor_only_from()
    assert ours[full] == 1.0 and (full == 0 or ours[full - 1] < 1.0)


@pytest.mark.parametrize("p, replacing_steps", [(0.5, 2500), (0.5, 7), (0.2, 1), (0.0, 3)])
def test_theseus_constant_rate_switches_to_one_after_steps_for_replacing(tiny_pair, p, replacing_steps):
    student, teacher = tiny_pair
    technique = BertOfTheseus(
        scheduler="constant",
        replacing_rate=p,
        steps_for_replacing=replacing_steps,
        **technique_kwargs(student, teacher),
    )
    steps = replacing_steps + 20
    ours = [technique.replace_rate(t) for t in range(steps)]
    assert ours == [p] * replacing_steps + [1.0] * 20
    assert ours == _reference_constant(p, replacing_steps, steps)
    assert technique.replacement.successor_only_from() == replacing_steps
    # steps_for_replacing=0: successor-only from the first step (the reference still runs one step at p)
    zero = BertOfTheseus(scheduler="constant", steps_for_replacing=0, **technique_kwargs(student, teacher))
    assert zero.replace_rate(0) == 1.0


def test_theseus_steps_read_the_rate_at_the_optimizer_step(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    technique = BertOfTheseus(
        replacing_rate=0.3, scheduler_linear_k=0.25, **technique_kwargs(student, teacher)
    )
    logged = fit_steps(technique, tiny_batch, steps=3).callback_metrics  # last step: t = 2
    assert logged["theseus/replace_rate"].item() == pytest.approx(0.8)
    technique = BertOfTheseus(
        replacing_rate=0.3, scheduler_linear_k=0.5, **technique_kwargs(student, teacher)
    )
    before = _snapshot(student)
    logged = fit_steps(technique, tiny_batch, steps=3).callback_metrics  # p = 1 from t = 2: successors alone
    assert logged["theseus/replace_rate"].item() == 1.0 and torch.isfinite(logged["loss/ce"])
    assert all(".encoder.layer." in k for k in _changed(before, student))


def test_theseus_is_one_stage_with_one_optimizer():
    assert [s.name for s in BertOfTheseus.stages(**BertOfTheseus.defaults_filled())] == ["train"]
    assert BertOfTheseus.requirements().find_unused_parameters and BertOfTheseus.requirements().teacher
    assert not {"stage", "replace_epochs", "finetune_epochs", "schedule"} & set(
        BertOfTheseus.hparam_signature()
    )


def test_theseus_compound_is_teacher_at_p0_and_successor_model_at_p1(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    _no_dropout(student, teacher)
    technique = BertOfTheseus(**technique_kwargs(student, teacher)).train()
    inputs = model_inputs(tiny_batch)
    with torch.no_grad():
        all_successors = technique.compound_logits(tiny_batch, [True, True])
        all_predecessors = technique.compound_logits(tiny_batch, [False, False])
        mixed = technique.compound_logits(tiny_batch, [True, False])
        successor_model = student(**inputs).logits
        teacher_logits = teacher(**inputs).logits
    assert torch.allclose(all_successors, successor_model, atol=1e-6)
    assert torch.allclose(all_predecessors, teacher_logits, atol=1e-6)
    assert not torch.allclose(mixed, successor_model) and not torch.allclose(mixed, teacher_logits)
    assert structure.num_layers(student) == 2  # the student's own layer list is back after each forward


def test_theseus_eval_runs_the_successor_model(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    technique = BertOfTheseus(
        scheduler="constant", replacing_rate=0.2, **technique_kwargs(student, teacher)
    ).eval()
    with torch.no_grad():
        assert torch.equal(technique(tiny_batch), student(**model_inputs(tiny_batch)).logits)


def test_theseus_export_is_a_plain_trainable_student(tiny_pair, tiny_batch):
    student, teacher = tiny_pair
    keys = set(student.state_dict())
    technique = BertOfTheseus(**technique_kwargs(student, teacher))
    fit_steps(technique, tiny_batch, steps=1)
    exported = technique.export_student()
    assert exported is student and set(exported.state_dict()) == keys
    assert structure.num_layers(exported) == 2
    assert all(p.requires_grad for p in exported.parameters())


def test_theseus_refuses_a_depth_that_does_not_divide_the_teacher(tiny_bert):
    student = layer_subset(tiny_bert, num_labels=3, num_layers=3)
    with pytest.raises(ConfigError, match=r"student.num_layers=3 .*1, 2, 4"):
        BertOfTheseus(**technique_kwargs(student, tiny_bert))


def test_theseus_refuses_a_different_width(tiny_bert):
    student = resized(tiny_bert, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    with pytest.raises(ConfigError, match="student.hidden_size"):
        BertOfTheseus(**technique_kwargs(student, tiny_bert))


@pytest.mark.parametrize(
    "hparams, key, allowed",
    [
        ({"scheduler": "cosine"}, "scheduler", "linear, constant"),
        ({"scheduler": "none"}, "scheduler", "linear, constant"),
        ({"replacing_rate": -0.1}, "replacing_rate", r"\[0, 1\]"),
        ({"replacing_rate": 1.5}, "replacing_rate", r"\[0, 1\]"),
        ({"replacing_rate": "0.3"}, "replacing_rate", r"\[0, 1\]"),
        ({"scheduler_linear_k": 0}, "scheduler_linear_k", "> 0"),
        ({"scheduler_linear_k": -0.001}, "scheduler_linear_k", "> 0"),
        ({"steps_for_replacing": -1}, "steps_for_replacing", ">= 0"),
        ({"steps_for_replacing": 2.5}, "steps_for_replacing", ">= 0"),
        ({"steps_for_replacing": True}, "steps_for_replacing", ">= 0"),
    ],
)
def test_theseus_rejects_bad_hparams_before_any_model(hparams, key, allowed):
    with pytest.raises(
        ConfigError, match=f"^technique.{key}={hparams[key]!r} is invalid: .*{allowed}"
    ) as err:
        BertOfTheseus.check_hparams(**hparams)
    assert "\n" not in str(err.value)


def test_replacement_sampling_and_compound_layers():
    generator = torch.Generator().manual_seed(0)
    assert sample_replacement(5, 0.0, generator) == [False] * 5
    assert sample_replacement(5, 1.0, generator) == [True] * 5
    draws = [sample_replacement(1, 0.3, generator)[0] for _ in range(2000)]
    assert sum(draws) / len(draws) == pytest.approx(0.3, abs=0.04)
    prd, scc = [nn.Identity() for _ in range(4)], [nn.Linear(1, 1) for _ in range(2)]
    layers = compound_layers(prd, scc, [True, False])
    assert list(layers) == [scc[0], prd[2], prd[3]]
    with pytest.raises(ValueError):
        compound_layers(prd[:3], scc, [True, True])


def test_lent_layers_restores_the_model_even_on_error(tiny_bert):
    own = structure.encoder_layers(tiny_bert)
    with pytest.raises(KeyError), structure.lent_layers(tiny_bert, nn.ModuleList(list(own)[:1])):
        assert structure.num_layers(tiny_bert) == 1
        raise KeyError("boom")
    assert structure.encoder_layers(tiny_bert) is own
