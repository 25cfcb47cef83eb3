"""The one place that knows where encoder models keep their parts, by ``config.model_type``.

Techniques that remove or replace modules (layer dropping, head pruning, BERT-of-Theseus) and student
builders go through these helpers instead of spelling ``model.bert.encoder.layer`` themselves, so a new
architecture is one table row here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from slimnlp.errors import ConfigError


@dataclass(frozen=True)
class _Arch:
    layers: str  # path of the encoder's layer list inside the base model
    ffn_key: str = "intermediate_size"  # config key of the feed-forward width
    follows_hidden: tuple[str, ...] = ()  # other config keys that must equal hidden_size
    # Inside one layer: the query/key/value projections (one row block per head), the attention output
    # projection (one column block per head), and the FFN's two Linears (one row / one column per unit).
    qkv: tuple[str, str, str] = ("attention.self.query", "attention.self.key", "attention.self.value")
    attention_out: str = "attention.output.dense"
    ffn: tuple[str, str] = ("intermediate.dense", "output.dense")
    heads_removable: bool = True  # False: something outside the layer is shaped by the head count


_ARCHS: dict[str, _Arch] = {
    "bert": _Arch("encoder.layer"),
    "roberta": _Arch("encoder.layer"),
    "xlm-roberta": _Arch("encoder.layer"),
    "camembert": _Arch("encoder.layer"),
    "electra": _Arch("encoder.layer"),
    "mpnet": _Arch("encoder.layer", qkv=("attention.attn.q", "attention.attn.k", "attention.attn.v"),
                   attention_out="attention.attn.o",
                   heads_removable=False),  # one relative-position bias [heads, T, T] computed for every layer
    "deberta-v2": _Arch(
        "encoder.layer", follows_hidden=("pooler_hidden_size",),
        qkv=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
    ),
    "distilbert": _Arch(
        "transformer.layer", ffn_key="hidden_dim", qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        attention_out="attention.out_lin", ffn=("ffn.lin1", "ffn.lin2"),
    ),
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_ARCHS)


def _arch(config: PretrainedConfig) -> _Arch:
    try:
        return _ARCHS[config.model_type]
    except KeyError:
        raise ConfigError(
            "model_type", config.model_type, f"supported encoders: {', '.join(SUPPORTED_MODEL_TYPES)}"
        ) from None


def backbone(model: PreTrainedModel) -> PreTrainedModel:
    """The base encoder (``model.bert``, ``model.roberta``, ...), or the model itself when it has no head."""
    _arch(model.config)
    return model.base_model


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The encoder's transformer blocks, in order."""
    layers = backbone(model).get_submodule(_arch(model.config).layers)
    assert isinstance(layers, nn.ModuleList), type(layers)
    return layers


def _layer_list_owner(model: PreTrainedModel) -> tuple[nn.Module, str]:
    parent, _, name = _arch(model.config).layers.rpartition(".")
    return backbone(model).get_submodule(parent) if parent else backbone(model), name


def set_encoder_layers(model: PreTrainedModel, layers: Sequence[nn.Module]) -> None:
    """Make ``layers`` the encoder's blocks for good, the config's depth following (layer dropping)."""
    owner, name = _layer_list_owner(model)
    setattr(owner, name, nn.ModuleList(layers))
    model.config.num_hidden_layers = len(layers)


@contextmanager
def lent_layers(model: PreTrainedModel, layers: nn.ModuleList) -> Iterator[PreTrainedModel]:
    """Run ``model`` with ``layers`` as its encoder layer list inside the block (HF encoders iterate their
    ``ModuleList`` in ``forward``); the own list is put back on exit, also on error. The model is a plain HF
    model before and after, so checkpoints never see the lent list; autograd does not care, so ``backward``
    after the block reaches every layer used (BERT-of-Theseus's compound model, LayerDrop's sampled depth)."""
    owner, name = _layer_list_owner(model)
    own = getattr(owner, name)
    setattr(owner, name, layers)
    try:
        yield model
    finally:
        setattr(owner, name, own)


def layers_prefix(model: PreTrainedModel) -> str:
    """State-dict prefix of the layer list (``bert.encoder.layer``): keys ``<prefix>.<i>.…`` belong to layer i."""
    layers = encoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def embeddings(model: PreTrainedModel) -> nn.Module:
    """Token/position embeddings (every supported encoder names them ``embeddings``)."""
    return backbone(model).embeddings


def num_layers(model: PreTrainedModel) -> int:
    """Counted from the modules, so it stays true after layers are dropped."""
    return len(encoder_layers(model))


def hidden_size(model: PreTrainedModel) -> int:
    _arch(model.config)
    return model.config.hidden_size


def num_attention_heads(model: PreTrainedModel) -> int:
    _arch(model.config)
    return model.config.num_attention_heads


def intermediate_size(model: PreTrainedModel) -> int:
    """Feed-forward width (``intermediate_size``; DistilBERT calls it ``hidden_dim``)."""
    return getattr(model.config, _arch(model.config).ffn_key)


def set_intermediate_size(model: PreTrainedModel, width: int) -> None:
    """Write the FFN width into the model's config (after every layer was sliced to it)."""
    setattr(model.config, _arch(model.config).ffn_key, width)


def head_size(model: PreTrainedModel) -> int:
    """Width of one attention head (unchanged by head pruning, which removes whole heads)."""
    return hidden_size(model) // num_attention_heads(model)


@dataclass(frozen=True)
class LayerParts:
    """The Linears of one encoder layer that structured pruning slices (paths relative to the layer)."""

    qkv: tuple[str, str, str]
    attention_out: str
    ffn_in: str
    ffn_out: str


def check_heads_removable(config: PretrainedConfig, key: str) -> None:
    """Head pruning needs heads that only their own layer sees (MPNet's encoder shares one bias per head)."""
    if not _arch(config).heads_removable:
        removable = [name for name, arch in _ARCHS.items() if arch.heads_removable]
        raise ConfigError(key, config.model_type, f"heads can be removed from: {', '.join(removable)}")


def layer_parts(model: PreTrainedModel) -> LayerParts:
    arch = _arch(model.config)
    return LayerParts(qkv=arch.qkv, attention_out=arch.attention_out, ffn_in=arch.ffn[0], ffn_out=arch.ffn[1])


@dataclass(frozen=True)
class Shape:
    """An encoder's shape as its config states it: what techniques check before any weight is loaded."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    ffn: int


def shape(config: PretrainedConfig) -> Shape:
    """The shape of the model a config describes (no weights needed)."""
    arch = _arch(config)
    return Shape(
        model_type=config.model_type,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        ffn=getattr(config, arch.ffn_key),
    )


def resized_config(
    config: PretrainedConfig,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_attention_heads: int,
) -> PretrainedConfig:
    """A copy of ``config`` at a new shape (vocabulary, activations, positions unchanged)."""
    arch = _arch(config)
    config = copy.deepcopy(config)
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden_size
    config.num_attention_heads = num_attention_heads
    setattr(config, arch.ffn_key, intermediate_size)
    for key in arch.follows_hidden:
        setattr(config, key, hidden_size)
    return config


PRUNABLE_PARTS = ("encoder", "pooler", "classifier", "embeddings")


def check_prunable_parts(parts: Sequence[str]) -> None:
    if not parts or any(p not in PRUNABLE_PARTS for p in parts):
        raise ConfigError("technique.targets", list(parts), f"a non-empty subset of {list(PRUNABLE_PARTS)}")


def prunable_modules(model: PreTrainedModel, parts: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the weight matrices of the chosen parts: ``encoder`` (every Linear of the
    transformer blocks: attention projections and FFN, the weights pruning papers count), ``pooler``,
    ``classifier`` (Linears outside the base model) and ``embeddings`` (the embedding tables)."""
    check_prunable_parts(parts)
    base = backbone(model)
    roots = {
        "encoder": (encoder_layers(model), nn.Linear),
        "pooler": (getattr(base, "pooler", None), nn.Linear),
        "embeddings": (embeddings(model), nn.Embedding),
    }
    chosen: list[nn.Module] = []
    for part in parts:
        if part == "classifier":
            inside = {id(m) for m in base.modules()}
            chosen += [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside]
        elif roots[part][0] is not None:
            root, kind = roots[part]
            chosen += [m for m in root.modules() if isinstance(m, kind)]
    wanted = {id(m) for m in chosen}
    return [(path, m) for path, m in model.named_modules() if id(m) in wanted]
