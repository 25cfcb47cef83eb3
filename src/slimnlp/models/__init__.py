"""Models: resolving offline sources, loading classifiers, architecture structure, student builders."""

from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier, load_tokenizer, set_attention_implementation
from slimnlp.models.students import describe, layer_subset, pretrained, resized, uniform_layer_map

__all__ = [
    "describe",
    "layer_subset",
    "load_classifier",
    "load_tokenizer",
    "pretrained",
    "resized",
    "resolve_pretrained",
    "set_attention_implementation",
    "uniform_layer_map",
]
