"""Student builders: which teacher weights land where, shapes, parameter counts and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification

from slimnlp.build import STUDENT_RUNNER_KEYS
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.models.loading import load_classifier
from slimnlp.models.students import describe, layer_subset, pretrained, resized, uniform_layer_map

STUDENT_CONF = Path(__file__).resolve().parents[2] / "conf" / "student"


def _layer_tensors(model, index: int) -> dict[str, torch.Tensor]:
    return structure.encoder_layers(model)[index].state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- layer maps


@pytest.mark.parametrize(
    ("num_student", "num_teacher", "expected"),
    [
        (2, 6, [2, 5]),
        (3, 6, [1, 3, 5]),
        (4, 6, [1, 2, 4, 5]),
        (6, 12, [1, 3, 5, 7, 9, 11]),
        (4, 12, [2, 5, 8, 11]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (1, 6, [5]),
        (5, 6, [1, 2, 3, 4, 5]),
    ],
)
def test_uniform_layer_map(num_student, num_teacher, expected):
    assert uniform_layer_map(num_student, num_teacher) == expected


@pytest.mark.parametrize("num_student", [0, 7, -1, 2.0, True])
def test_uniform_layer_map_rejects_impossible_counts(num_student):
    with pytest.raises(ConfigError, match="student.num_layers"):
        uniform_layer_map(num_student, 6)


# ---------------------------------------------------------------- layer_subset


@pytest.mark.parametrize(("init", "expected_map"), [("skip", [1, 3]), ("first", [0, 1])])
def test_layer_subset_copies_the_mapped_teacher_layers(tiny_bert, init, expected_map):
    before = _snapshot(tiny_bert)
    student = layer_subset(tiny_bert, num_labels=3, num_layers=2, init=init)

    assert student.config.slimnlp_layer_map == expected_map
    assert structure.num_layers(student) == 2 and student.config.num_hidden_layers == 2
    for i, t in enumerate(expected_map):
        _assert_same(_layer_tensors(student, i), _layer_tensors(tiny_bert, t))
    # and not some other teacher layer (the layers differ, so equality above is informative)
    other = next(t for t in range(4) if t != expected_map[0])
    assert not torch.equal(
        _layer_tensors(student, 0)["attention.self.query.weight"],
        _layer_tensors(tiny_bert, other)["attention.self.query.weight"],
    )
    _assert_same(structure.embeddings(student).state_dict(), structure.embeddings(tiny_bert).state_dict())
    _assert_same(student.bert.pooler.state_dict(), tiny_bert.bert.pooler.state_dict())
    _assert_same(student.classifier.state_dict(), tiny_bert.classifier.state_dict())
    _assert_same(tiny_bert.state_dict(), before)  # the teacher is untouched
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(student.parameters(), tiny_bert.parameters()))


def test_layer_subset_student_matches_the_teacher_when_it_keeps_every_layer(tiny_bert, tokenizer):
    student = layer_subset(tiny_bert, num_labels=3, num_layers=4).eval()
    batch = tokenizer(["the same network computes the same logits"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, tiny_bert(**batch).logits)


def test_layer_subset_new_head_when_label_count_differs(tiny_bert):
    student = layer_subset(tiny_bert, num_labels=5, num_layers=2)
    assert student.classifier.weight.shape == (5, 32)
    assert student.config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    _assert_same(_layer_tensors(student, 1), _layer_tensors(tiny_bert, 3))


def test_layer_subset_random_init_copies_nothing(tiny_bert):
    student = layer_subset(tiny_bert, num_labels=3, num_layers=2, init="random")
    assert student.config.slimnlp_layer_map is None
    teacher_weights = tiny_bert.state_dict()
    for key, tensor in student.state_dict().items():
        if (
            tensor.dtype.is_floating_point and tensor.std() > 0
        ):  # LayerNorm ones / zero biases match by design
            assert not torch.equal(tensor, teacher_weights[key]), key


def test_layer_map_override(tiny_bert):
    student = layer_subset(tiny_bert, num_labels=3, num_layers=3, layer_map=[3, 0, 2])
    assert student.config.slimnlp_layer_map == [3, 0, 2]
    for i, t in enumerate([3, 0, 2]):
        _assert_same(_layer_tensors(student, i), _layer_tensors(tiny_bert, t))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_layers": 2, "layer_map": [0]}, "student.layer_map"),
        ({"num_layers": 2, "layer_map": [0, 4]}, "student.layer_map"),
        ({"num_layers": 2, "layer_map": [-1, 1]}, "student.layer_map"),
        ({"num_layers": 2, "layer_map": [0, 1.0]}, "student.layer_map"),
        ({"num_layers": 2, "layer_map": [0, 1], "init": "random"}, "student.layer_map"),
        ({"num_layers": 0}, "student.num_layers"),
        ({"num_layers": 5}, "student.num_layers"),
        ({"num_layers": 2, "init": "bogus"}, "student.init"),
    ],
)
def test_layer_subset_bad_values_are_config_errors(tiny_bert, kwargs, key):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        layer_subset(tiny_bert, num_labels=3, **kwargs)


def test_layer_subset_of_the_real_minilm(minilm_dir):
    teacher = load_classifier(str(minilm_dir), num_labels=3)
    student = layer_subset(teacher, num_labels=3, num_layers=2)

    assert student.config.slimnlp_layer_map == [2, 5]
    layer_params = sum(p.numel() for p in structure.encoder_layers(teacher)[0].parameters())
    assert layer_params == 4 * (384 * 384 + 384) + 2 * 384 * 1536 + 1536 + 384 + 2 * 2 * 384
    assert describe(teacher)["params"] == 22_714_371
    assert describe(student)["params"] == describe(teacher)["params"] - 4 * layer_params
    _assert_same(_layer_tensors(student, 1), _layer_tensors(teacher, 5))
    assert describe(student) | {"params": 0} == {
        "model_type": "bert",
        "layers": 2,
        "hidden": 384,
        "heads": 12,
        "ffn": 1536,
        "params": 0,
    }


# ---------------------------------------------------------------- other architectures


def _tiny(model_type: str) -> transformers.PreTrainedModel:
    shape = {"hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 24}
    if model_type == "distilbert":
        shape = {"dim": 16, "n_layers": 4, "n_heads": 2, "hidden_dim": 24}
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=99, max_position_embeddings=40, num_labels=2, **shape
    )
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("model_type", structure.SUPPORTED_MODEL_TYPES)
def test_builders_on_every_supported_architecture(model_type):
    teacher = _tiny(model_type)
    student = layer_subset(teacher, num_labels=2, num_layers=2).eval()
    assert structure.num_layers(student) == 2
    for i, t in enumerate([1, 3]):
        _assert_same(_layer_tensors(student, i), _layer_tensors(teacher, t))
    # nothing but the dropped layers is lost: every other teacher tensor was copied
    dropped = tuple(f"{structure.layers_prefix(teacher)}.{t}." for t in (0, 2))
    kept = {k: v for k, v in teacher.state_dict().items() if not k.startswith(dropped)}
    assert sum(v.numel() for v in kept.values()) == sum(v.numel() for v in student.state_dict().values())

    small = resized(teacher, 2, num_layers=1, hidden_size=8, intermediate_size=12, num_attention_heads=2)
    assert describe(small) | {"params": 0} == {
        "model_type": model_type,
        "layers": 1,
        "hidden": 8,
        "heads": 2,
        "ffn": 12,
        "params": 0,
    }
    ids = torch.randint(5, 99, (2, 6))
    assert student(input_ids=ids).logits.shape == small(input_ids=ids).logits.shape == (2, 2)


# ---------------------------------------------------------------- resized


def _bert_params(vocab, positions, types, hidden, ffn, layers, labels):
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * hidden * ffn + ffn + hidden + 2 * 2 * hidden
    return embeddings + layers * layer + (hidden * hidden + hidden) + (hidden * labels + labels)


def test_resized_shapes_and_parameter_count(tiny_bert):
    student = resized(tiny_bert, 5, num_layers=2, hidden_size=24, intermediate_size=40, num_attention_heads=3)
    assert describe(student) == {
        "model_type": "bert",
        "layers": 2,
        "hidden": 24,
        "heads": 3,
        "ffn": 40,
        "params": _bert_params(30522, 128, 2, 24, 40, 2, 5),
    }
    assert student.config.vocab_size == tiny_bert.config.vocab_size
    assert student.config.slimnlp_layer_map is None
    assert structure.encoder_layers(student)[1].intermediate.dense.weight.shape == (40, 24)
    assert tiny_bert.config.hidden_size == 32  # the teacher's config was copied, not edited


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "student.hidden_size"),
        ({"num_layers": 0}, "student.num_layers"),
        ({"intermediate_size": -2}, "student.intermediate_size"),
        ({"init": "skip"}, "student.init"),
    ],
)
def test_resized_bad_values_are_config_errors(tiny_bert, kwargs, key):
    args = {"num_layers": 2, "hidden_size": 24, "intermediate_size": 40, "num_attention_heads": 3} | kwargs
    with pytest.raises(ConfigError, match=rf"^{key}="):
        resized(tiny_bert, 3, **args)


# ---------------------------------------------------------------- pretrained


def test_pretrained_student_from_a_run_folder(tmp_path, tiny_bert):
    saved = layer_subset(tiny_bert, num_labels=3, num_layers=2)
    saved.save_pretrained(tmp_path / "run" / "student")
    student = pretrained(tiny_bert, 3, path=str(tmp_path / "run"))
    _assert_same(student.state_dict(), saved.state_dict())
    assert student.config.slimnlp_layer_map == [1, 3]  # survives the save, so stages can chain


def test_pretrained_student_with_another_vocabulary_is_refused(tmp_path, tiny_bert):
    config = BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(
        ConfigError, match=r"^student.path=.*this one has 100\).*share the teacher's tokenizer"
    ):
        pretrained(tiny_bert, 3, path=str(tmp_path))


# ---------------------------------------------------------------- the conf/student group


def _six_layer_teacher() -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=30522,
        hidden_size=24,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


@pytest.mark.parametrize(
    ("conf", "layers", "layer_map"),
    [("6L", 6, [0, 1, 2, 3, 4, 5]), ("4L", 4, [1, 2, 4, 5]), ("3L", 3, [1, 3, 5]), ("2L", 2, [2, 5])],
)
def test_layer_subset_configs(conf, layers, layer_map):
    cfg = OmegaConf.load(STUDENT_CONF / f"{conf}.yaml")
    assert cfg.name == conf
    builder = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in STUDENT_RUNNER_KEYS])  # as the runner does
    student = instantiate(builder)(teacher=_six_layer_teacher(), num_labels=3)
    assert structure.num_layers(student) == layers
    assert student.config.slimnlp_layer_map == layer_map


def test_tinybert_config(tiny_bert):
    cfg = OmegaConf.load(STUDENT_CONF / "tinybert_4L.yaml")
    assert cfg.pop("name") == "tinybert_4L"
    student = instantiate(cfg)(teacher=tiny_bert, num_labels=3)
    assert describe(student) == {
        "model_type": "bert",
        "layers": 4,
        "hidden": 312,
        "heads": 12,
        "ffn": 1200,
        "params": _bert_params(30522, 128, 2, 312, 1200, 4, 3),
    }


def test_path_config(tmp_path, tiny_bert):
    cfg = OmegaConf.load(STUDENT_CONF / "path.yaml")
    assert OmegaConf.is_missing(cfg, "path")
    tiny_bert.save_pretrained(tmp_path)
    cfg.path = str(tmp_path)
    assert cfg.pop("name") == "path"
    student = instantiate(cfg)(teacher=tiny_bert, num_labels=3)
    _assert_same(student.state_dict(), tiny_bert.state_dict())
