"""Student builders: callables ``(teacher, num_labels, **cfg) -> PreTrainedModel``.

The teacher passed in supplies the architecture, vocabulary and (where shapes allow) the initial weights;
it is never modified. Configs select a builder with ``_target_`` and ``_partial_: true``; the runner pops
the results-only ``name`` key and calls the partial with ``teacher=`` and ``num_labels=``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from slimnlp.artifacts import MANIFEST_NAME, load_student
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier

INITS = ("skip", "first", "distilbert", "random")


def uniform_layer_map(num_student: int, num_teacher: int) -> list[int]:
    """Teacher layer for each student layer, evenly spread and top-aligned: ``ceil((i+1)·L_T/L_S) − 1``.

    The last student layer always maps to the last teacher layer; 12→6 gives PKD-skip's
    [1, 3, 5, 7, 9, 11] (Sun et al., 2019, "Patient Knowledge Distillation for BERT Model Compression").
    Used both to initialize students and to pair layers for intermediate-layer distillation.
    """
    _check_count("student.num_layers", num_student, num_teacher)
    return [-(-(i + 1) * num_teacher // num_student) - 1 for i in range(num_student)]


def distilbert_layer_map(num_student: int, num_teacher: int) -> list[int]:
    """DistilBERT's student initialisation (Sanh et al. 2019; the authors' ``scripts/extract_distilbert.py`` copies
    teacher layers [0, 2, 4, 7, 9, 11] of BERT-base into the 6-layer student): first and last teacher layers kept,
    the rest evenly spread, ``round_half_up(i·(L_T − 1)/(L_S − 1))``, which gives exactly that list for 12 → 6
    (6 → 3: [0, 3, 5]; 6 → 2: [0, 5]). A 1-layer student takes the first teacher layer."""
    _check_count("student.num_layers", num_student, num_teacher)
    if num_student == 1:
        return [0]
    return [(2 * i * (num_teacher - 1) + num_student - 1) // (2 * (num_student - 1)) for i in range(num_student)]


def layer_subset(
    teacher: PreTrainedModel,
    num_labels: int,
    num_layers: int,
    init: str = "skip",
    layer_map: list[int] | None = None,
) -> PreTrainedModel:
    """The teacher with only ``num_layers`` encoder layers (PKD / DistilBERT-style initialization).

    ``init``: ``skip`` copies ``uniform_layer_map`` layers, ``first`` the bottom ``num_layers`` (PKD's
    choice), ``distilbert`` the authors' spread (``distilbert_layer_map``), ``random`` copies nothing. ``layer_map`` overrides which teacher layers are copied. Embeddings,
    pooler and encoder-level parameters are copied too, and the classifier head when its shape matches.
    The map used is recorded as ``student.config.slimnlp_layer_map`` (None for random).
    """
    num_teacher = structure.num_layers(teacher)
    _check_count("student.num_layers", num_layers, num_teacher)
    if init not in INITS:
        raise ConfigError("student.init", init, f"one of {', '.join(INITS)}")
    if layer_map is not None:
        layer_map = _checked_layer_map(layer_map, num_layers, num_teacher, init)
    elif init == "skip":
        layer_map = uniform_layer_map(num_layers, num_teacher)
    elif init == "first":
        layer_map = list(range(num_layers))
    elif init == "distilbert":
        layer_map = distilbert_layer_map(num_layers, num_teacher)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    student = _from_config(config, teacher, num_labels, layer_map)
    if layer_map is not None:
        _copy_weights(teacher, student, layer_map)
    return student


def resized(
    teacher: PreTrainedModel,
    num_labels: int,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_attention_heads: int,
    init: str = "random",
) -> PreTrainedModel:
    """The teacher's architecture and vocabulary at a new shape, randomly initialized.

    E.g. TinyBERT-4 (Jiao et al., 2020): 4 layers, hidden 312, FFN 1200, 12 heads. No teacher weight has
    the new shape, so ``random`` is the only ``init``; a pretrained small model goes through ``pretrained``.
    """
    for key, value in {
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads,
    }.items():
        _check_count(f"student.{key}", value)
    if hidden_size % num_attention_heads:
        raise ConfigError(
            "student.hidden_size", hidden_size, f"a multiple of num_attention_heads={num_attention_heads}"
        )
    if init != "random":
        raise ConfigError("student.init", init, "random (no teacher weight has the resized shape)")
    config = structure.resized_config(
        teacher.config,
        num_layers=num_layers,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_attention_heads,
    )
    return _from_config(config, teacher, num_labels, layer_map=None)


def pretrained(
    teacher: PreTrainedModel, num_labels: int, path: str, cache_dir: str | None = None
) -> PreTrainedModel:
    """A student loaded from an HF checkpoint, local folder or slimnlp run folder (``<run>/student``).

    A slimnlp artifact of any shape (pruned heads, factorized or shared layers …) is rebuilt exactly by
    ``slimnlp.load_student``; a plain checkpoint loads as a classifier (a new head when it has none).
    Refused when its vocabulary size differs from the teacher's: teacher and student read the same
    tokenized batches, so they must share a tokenizer. ``cache_dir`` is needed only for zipparts:// paths.
    """
    source = resolve_pretrained(path, cache_dir, key="student.path")
    vocab_S, vocab_T = AutoConfig.from_pretrained(source).vocab_size, teacher.config.vocab_size
    if vocab_S != vocab_T:
        raise ConfigError(
            "student.path",
            path,
            f"a model with the teacher's vocabulary ({vocab_T} tokens; this one has {vocab_S}): "
            "students share the teacher's tokenizer",
        )
    attn = teacher.config._attn_implementation
    if (Path(source) / MANIFEST_NAME).is_file():
        student = load_student(source, attn_implementation=attn)
        if student.config.num_labels != num_labels:
            raise ConfigError("student.path", path, f"a student of this task's {num_labels} labels")
        return student.train()
    labels = teacher.config.id2label
    label_names = [labels[i] for i in range(num_labels)] if len(labels) == num_labels else None
    return load_classifier(source, num_labels, attn_implementation=attn, label_names=label_names)


def describe(model: PreTrainedModel) -> dict[str, int | str]:
    """Shape and size of a model, for logs and results.json."""
    return {
        "model_type": model.config.model_type,
        "layers": structure.num_layers(model),
        "hidden": structure.hidden_size(model),
        "heads": structure.num_attention_heads(model),
        "ffn": structure.intermediate_size(model),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _check_count(key: str, value: object, upper: int | None = None) -> None:
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not in_range or (upper is not None and value > upper):
        limit = f"1..{upper} (the teacher has {upper} layers)" if upper is not None else "an integer >= 1"
        raise ConfigError(key, value, limit)


def _checked_layer_map(layer_map: list[int], num_layers: int, num_teacher: int, init: str) -> list[int]:
    layer_map = list(layer_map)
    if init == "random":
        raise ConfigError("student.layer_map", layer_map, "null with init=random (random copies no layers)")
    valid = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_teacher for i in layer_map)
    if len(layer_map) != num_layers or not valid:
        raise ConfigError(
            "student.layer_map", layer_map, f"{num_layers} teacher layer indices in 0..{num_teacher - 1}"
        )
    return layer_map


def _from_config(
    config: PretrainedConfig, teacher: PreTrainedModel, num_labels: int, layer_map: list[int] | None
) -> PreTrainedModel:
    config.num_labels = num_labels  # keeps the teacher's label names when the count matches
    config.slimnlp_layer_map = layer_map
    return AutoModelForSequenceClassification.from_config(
        config, attn_implementation=teacher.config._attn_implementation
    )


def _copy_weights(teacher: PreTrainedModel, student: PreTrainedModel, layer_map: list[int]) -> None:
    """Copy every teacher tensor of the same name and shape, renaming student layer i to ``layer_map[i]``."""
    source = teacher.state_dict()
    prefix = f"{structure.layers_prefix(student)}."
    weights = {}
    for key, tensor in student.state_dict().items():
        source_key = key
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            source_key = f"{prefix}{layer_map[int(index)]}.{rest}"
        if source_key in source and source[source_key].shape == tensor.shape:
            weights[key] = source[source_key]
    student.load_state_dict(weights, strict=False)
