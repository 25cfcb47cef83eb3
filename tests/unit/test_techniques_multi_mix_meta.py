"""multi_teacher and mixkd: one real Lightning step each on tiny models, plus the pieces that make each
method what it is (the teachers' mixture, the mixed inputs). meta_kd has its own file, test_meta_kd.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import BertForSequenceClassification

from conftest import fit_steps, technique_kwargs
from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models.students import resized
from slimnlp.teacher_cache import TeacherLogitCache
from slimnlp.techniques.mixkd import MixKD, mixed_inputs
from slimnlp.techniques.multi_teacher import MultiTeacherKD, combine_soft_targets, performance_weights

CONF = Path(__file__).resolve().parents[2] / "conf" / "technique"


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


@pytest.fixture()
def second_teacher(tiny_bert):
    """Another 4-layer tiny teacher with different weights (a second seed of the same architecture)."""
    torch.manual_seed(1)
    return BertForSequenceClassification(copy.deepcopy(tiny_bert.config)).eval()


def _yaml_hparams(name: str) -> dict:
    node = OmegaConf.load(CONF / f"{name}.yaml")
    return {k: v for k, v in node.items() if not str(k).startswith("_")}


# --- multi_teacher ------------------------------------------------------------------------------------


def test_combined_soft_labels_equal_hand_computed_mixtures():
    z1 = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    z2 = torch.tensor([[-1.0, 1.0, 0.0], [1.0, -2.0, 0.0]])
    tau = 2.0
    p1, p2 = F.softmax(z1 / tau, -1), F.softmax(z2 / tau, -1)
    mean = combine_soft_targets([z1, z2], torch.tensor([0.5, 0.5]), tau).exp()
    torch.testing.assert_close(mean, (p1 + p2) / 2)
    weighted = combine_soft_targets([z1, z2], torch.tensor([0.25, 0.75]), tau).exp()
    torch.testing.assert_close(weighted, 0.25 * p1 + 0.75 * p2)

    labels = torch.tensor([0, 2])
    w = performance_weights([z1, z2], labels)
    raw = torch.stack([1 / (1 - F.softmax(z, -1).log()[torch.arange(2), labels]) for z in (z1, z2)], -1)
    torch.testing.assert_close(w, raw / raw.sum(-1, keepdim=True))
    per_example = combine_soft_targets([z1, z2], w, tau).exp()
    torch.testing.assert_close(per_example, w[:, :1] * p1 + w[:, 1:] * p2)


def test_technique_weights_are_normalized(tiny_pair, second_teacher):
    student, teacher = tiny_pair
    technique = MultiTeacherKD(
        teachers=[teacher, second_teacher],
        combine="weighted",
        weights=[1, 3],
        **technique_kwargs(student, teacher),
    )
    torch.testing.assert_close(technique.teacher_weights, torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize(
    "combine, weights, hidden_weight",
    [("mean", None, 0.0), ("weighted", [1.0, 2.0], 0.0), ("performance", None, 0.5)],
)
def test_multi_teacher_step(tiny_pair, second_teacher, tiny_batch, combine, weights, hidden_weight):
    student, teacher = tiny_pair
    technique = MultiTeacherKD(
        teachers=[teacher, second_teacher],
        combine=combine,
        weights=weights,
        alpha=0.3,
        temperature=2.0,
        hidden_weight=hidden_weight,
        **technique_kwargs(student, teacher),
    )
    before_S, before_T1, before_T2 = _snapshot(student), _snapshot(teacher), _snapshot(second_teacher)
    logged = fit_steps(technique, tiny_batch, steps=2).callback_metrics
    names = ["train/loss", "loss/ce", "loss/kd_kl"] + (["loss/hidden"] if hidden_weight else [])
    for name in names:
        assert torch.isfinite(logged[name]), name
    expected = 0.3 * logged["loss/ce"] + 0.7 * logged["loss/kd_kl"]
    if hidden_weight:
        expected = expected + hidden_weight * logged["loss/hidden"]
    assert logged["train/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert _changed(before_S, student), "the student did not train"
    assert not _changed(before_T1, teacher) and not _changed(before_T2, second_teacher), (
        "teachers must stay frozen"
    )
    assert all(n.startswith("student.") for n, _ in technique.named_parameters())
    assert all(k.startswith("student.") for k in technique.state_dict())


def test_multi_teacher_with_one_teacher_is_kd(tiny_pair, tiny_batch):
    """One teacher, combine=mean: the mixture is that teacher's distribution, so the loss is technique=kd's."""
    from slimnlp.techniques.kd import LogitKD

    student, teacher = tiny_pair
    multi = MultiTeacherKD(
        teachers=[teacher], alpha=0.3, temperature=2.0, **technique_kwargs(student, teacher)
    )
    single = LogitKD(alpha=0.3, temperature=2.0, **technique_kwargs(student, teacher))
    multi.eval(), single.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            multi.training_loss(tiny_batch)["loss"], single.training_loss(tiny_batch)["loss"]
        )


def test_multi_teacher_logits_come_from_per_teacher_caches(tiny_pair, second_teacher, tiny_batch, tmp_path):
    student, teacher = tiny_pair
    technique = MultiTeacherKD(teachers=[teacher, second_teacher], **technique_kwargs(student, teacher))
    caches = [
        TeacherLogitCache(tmp_path / f"t{k}", f"key{k}", num_examples=4, num_labels=3) for k in range(2)
    ]
    technique.attach_logit_caches(None, caches)
    fit_steps(technique, tiny_batch, steps=1)
    for cache, model in zip(caches, (teacher, second_teacher)):
        assert cache.filled.all()
        with torch.no_grad():
            torch.testing.assert_close(cache.get(tiny_batch["idx"]), model(**model_inputs(tiny_batch)).logits)
    assert all((tmp_path / f"t{k}" / "logits.npy").is_file() for k in range(2)), (
        "full caches are saved at epoch end"
    )


def test_multi_teacher_default_yaml_specs_are_valid():
    MultiTeacherKD.check_hparams(**_yaml_hparams("multi_teacher"))


@pytest.mark.parametrize(
    "hparams, key",
    [
        ({"teachers": []}, "teachers"),
        ({"teachers": "minilm_l6"}, "teachers"),
        ({"teachers": [{"seed": 1}]}, r"teachers\[0\].teacher"),
        ({"teachers": ["minilm_l6"]}, r"teachers\[0\]"),
        ({"teachers": [{"teacher": "minilm_l6", "seed": "one"}]}, r"teachers\[0\].seed"),
        ({"teachers": [{"teacher": "minilm_l6", "lr": 1e-5}]}, r"teachers\[0\]"),
        ({"combine": "max"}, "combine"),
        ({"combine": "weighted"}, "weights"),
        ({"combine": "weighted", "weights": [1.0]}, "weights"),
        ({"combine": "weighted", "weights": [1.0, 0.0]}, "weights"),
        ({"combine": "weighted", "weights": [1.0, -2.0]}, "weights"),
        ({"combine": "mean", "weights": [1.0, 2.0]}, "weights"),
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"hidden_weight": -1.0}, "hidden_weight"),
    ],
)
def test_multi_teacher_rejects_bad_specs_before_any_model(hparams, key):
    specs = [{"teacher": "minilm_l6", "seed": 1, "checkpoint": None}, {"teacher": "minilm_l6", "seed": 2}]
    with pytest.raises(ConfigError, match=f"technique.{key}"):
        MultiTeacherKD.check_hparams(**{"teachers": specs, **hparams})


def test_multi_teacher_hidden_loss_needs_matching_widths(tiny_bert, second_teacher):
    narrow = resized(tiny_bert, 3, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    kwargs = technique_kwargs(narrow, tiny_bert)
    with pytest.raises(ConfigError, match="technique.hidden_weight"):
        MultiTeacherKD(teachers=[tiny_bert, second_teacher], hidden_weight=1.0, **kwargs)
    MultiTeacherKD(teachers=[tiny_bert, second_teacher], hidden_weight=0.0, **kwargs)  # logits only: fine


def test_multi_teacher_layer_maps_are_derived_and_logged(tiny_pair, second_teacher, caplog):
    student, teacher = tiny_pair
    with caplog.at_level("INFO", logger="slimnlp.techniques.multi_teacher"):
        technique = MultiTeacherKD(
            teachers=[teacher, second_teacher], hidden_weight=1.0, **technique_kwargs(student, teacher)
        )
    assert technique.layer_maps == [[1, 3], [1, 3]]
    assert "teacher 0 layer -> student layer: 1->0, 3->1" in caplog.text
    with pytest.raises(ConfigError, match="technique.layer_map"):
        MultiTeacherKD(
            teachers=[teacher], hidden_weight=1.0, layer_map=[1, 4], **technique_kwargs(student, teacher)
        )


def test_multi_teacher_refuses_unloaded_specs(tiny_pair):
    student, teacher = tiny_pair
    with pytest.raises(ConfigError, match="technique.teachers"):
        MultiTeacherKD(teachers=[{"teacher": "minilm_l6", "seed": 1}], **technique_kwargs(student, teacher))


# --- mixkd --------------------------------------------------------------------------------------------


def _with_token_types(batch):
    batch = dict(batch)
    batch["token_type_ids"] = (
        (torch.arange(batch["input_ids"].shape[1]) >= 2).long().expand_as(batch["input_ids"]).clone()
    )
    return batch


@pytest.mark.parametrize("token_types", [False, True])
def test_mixed_inputs_at_lambda_one_are_the_originals(tiny_pair, tiny_batch, token_types):
    batch = _with_token_types(tiny_batch) if token_types else tiny_batch
    perm = torch.tensor([1, 2, 3, 0])
    for model in tiny_pair:
        model.eval()
        mixed = mixed_inputs(model, batch, 1.0, perm)
        assert torch.equal(mixed["attention_mask"], batch["attention_mask"])
        with torch.no_grad():
            expected = model(**model_inputs(batch)).logits
            torch.testing.assert_close(model(**mixed).logits, expected, atol=1e-5, rtol=1e-5)
            if not token_types:
                torch.testing.assert_close(
                    mixed["inputs_embeds"], model.get_input_embeddings()(batch["input_ids"])
                )
            partner = {k: v[perm] for k, v in model_inputs(batch).items()}
            torch.testing.assert_close(
                model(**mixed_inputs(model, batch, 0.0, perm)).logits,
                model(**partner).logits,
                atol=1e-5,
                rtol=1e-5,
            )


def test_mixed_attention_mask_is_the_union_inside(tiny_batch, tiny_bert):
    perm = torch.tensor([1, 0, 3, 2])
    mask = tiny_batch["attention_mask"]
    mixed = mixed_inputs(tiny_bert, tiny_batch, 0.3, perm)
    assert torch.equal(mixed["attention_mask"], torch.maximum(mask, mask[perm]))


def test_mixkd_lambda_and_pairs_are_seeded_and_resumable(tiny_pair):
    student, teacher = tiny_pair
    a = MixKD(seed=3, **technique_kwargs(student, teacher))
    b = MixKD(seed=3, **technique_kwargs(copy.deepcopy(student), teacher))
    c = MixKD(seed=4, **technique_kwargs(copy.deepcopy(student), teacher))
    draws_a = [a.draw_mix(8) for _ in range(3)]
    draws_b = [b.draw_mix(8) for _ in range(3)]
    assert [(lam, p.tolist()) for lam, p in draws_a] == [(lam, p.tolist()) for lam, p in draws_b]
    assert [lam for lam, _ in draws_a] != [c.draw_mix(8)[0] for _ in range(3)]
    checkpoint: dict = {}
    a.on_save_checkpoint(checkpoint)
    next_a = a.draw_mix(8)
    b.on_load_checkpoint(checkpoint)
    next_b = b.draw_mix(8)
    assert next_a[0] == next_b[0] and torch.equal(next_a[1], next_b[1])


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_mixkd_step(tiny_pair, tiny_batch, loss):
    student, teacher = tiny_pair
    technique = MixKD(
        alpha=0.3,
        temperature=2.0,
        loss=loss,
        tmkd_weight=0.7,
        sm_weight=0.4,
        seed=0,
        **technique_kwargs(student, teacher),
    )
    before_S, before_T = _snapshot(student), _snapshot(teacher)
    logged = fit_steps(technique, tiny_batch, steps=2).callback_metrics
    for name in ("train/loss", "loss/ce", "loss/kd", "loss/kd_mix", "loss/sm", "mix/lambda"):
        assert torch.isfinite(logged[name]), name
    expected = (
        0.3 * logged["loss/ce"]
        + 0.7 * logged["loss/kd"]
        + 0.7 * logged["loss/kd_mix"]
        + 0.4 * logged["loss/sm"]
    )
    assert logged["train/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0.0 <= logged["mix/lambda"].item() <= 1.0
    assert _changed(before_S, student), "the student did not train"
    assert not _changed(before_T, teacher), "the teacher must stay frozen"
    assert technique.needs.teacher and not technique.needs.cacheable_teacher_logits


@pytest.mark.parametrize(
    "hparams, key",
    [
        ({"mix_alpha": 0.0}, "mix_alpha"),
        ({"tmkd_weight": -1.0}, "tmkd_weight"),
        ({"sm_weight": -0.5}, "sm_weight"),
        ({"loss": "cosine"}, "loss"),
        ({"seed": -1}, "seed"),
        ({"alpha": 2.0}, "alpha"),
    ],
)
def test_mixkd_rejects_bad_hparams(hparams, key):
    MixKD.check_hparams(**_yaml_hparams("mixkd"))
    with pytest.raises(ConfigError, match=f"technique.{key}"):
        MixKD.check_hparams(**hparams)
