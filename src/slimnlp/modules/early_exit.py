"""Patience-based early exit: PABEE (Zhou et al. 2020, "BERT Loses Patience: Fast and Robust Inference with
Early Exit", NeurIPS; code: github.com/JetRunner/PABEE, ``pabee/modeling_bert.py``), as plain torch.

Every encoder layer ``j`` gets an internal classifier: the model's pooler, shared by all layers, then dropout and
a Linear of its own (the authors' ``self.classifiers``: one ``nn.Linear`` per layer after the one ``BertPooler``;
the last layer's Linear is the model's own ``classifier``). Training minimises the weighted average of the layers'
cross-entropies, layer ``j`` weighted by ``j`` (``patience_weighted_loss``). At inference an example leaves the
network after the first layer at which its internal prediction (arg-max) has stayed the same ``patience`` times in
a row; an example that never does is answered by the last layer.

The reference code runs the patience loop on the whole batch (``torch.all(labels.eq(patient_labels))``: batch
size 1 only). Here every example keeps its own counter, and the examples that exit are removed from the batch
(``index_select`` on the hidden states and the attention mask) so later layers only compute the rest: the saving
is real at any batch size, and the answers do not depend on the batch an example is in.

In the artifact, ``PatienceExitEncoder`` takes the place of the model's encoder (a wrapping artifact kind: it keeps
the encoder's own layers, so anything inside them stays described as usual) and owns the pooler and the internal
classifiers; the model's ``pooler`` and ``classifier`` paths are aliases of them. The HF model's own forward
therefore runs unchanged: the encoder returns each example's hidden states from the layer it left at, the pooler
pools them, and the classifier (``ExitClassifiers``) applies to each example the Linear of that layer, told the
layers by the encoder on every pass. Measurement, which calls the model's forward, times the early exit as is.

Deviations from the reference: (1) per-example exits at any batch size (above); (2) ``patience`` counts as in the
reference (exit when ``patience`` consecutive layers repeat the previous one's prediction, so at layer
``patience + 1`` at the earliest), but the reference's ``patience = 0`` ("use all layers") is not a value here: a
patience of ``depth - 1`` or more never exits early and is the full model; (3) classification only (the
reference's regression threshold is not implemented); (4) BERT-family encoders (``model_type`` bert: BERT,
MiniLM), whose head is the pooler and one Linear, like the reference's; (5) ``pooling="mean"`` (not in the
reference, which always pools ``[CLS]``): the pooler reads the mean of each example's real tokens instead of its
``[CLS]`` (``MaskedMeanPooler``, the same dense + tanh and the same parameters). A sentence-transformer trained with
mean pooling, such as the embedded default's all-MiniLM-L6-v2, has a lower-layer ``[CLS]`` that hardly varies
across inputs (``experiments/pabee_cls_probe.py``: pooled std ~1e-4 at layers 1-3, 0.18 at layer 6), so internal
classifiers on it stay at chance and every patience exits on a constant answer; its mean-pooled tokens do vary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bert.modeling_bert import BertPooler

from slimnlp.artifacts import register_module_kind
from slimnlp.errors import ConfigError
from slimnlp.models import structure

EARLY_EXIT_MODEL_TYPES = ("bert",)
EXIT_POOLINGS = ("cls", "mean")  # what the shared pooler reads: the [CLS] token (the paper) or the masked token mean


def patience_weighted_loss(layer_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
    """PABEE's training objective: ``sum_j j * CE_j / sum_j j`` over the layers' internal classifiers (layer
    ``j`` counted from 1), so deeper classifiers, which can be more accurate, weigh more."""
    losses = [F.cross_entropy(logits, labels) for logits in layer_logits]
    weights = range(1, len(losses) + 1)
    return sum(j * loss for j, loss in zip(weights, losses)) / sum(weights)


class ExitClassifiers(nn.Module):
    """One Linear per encoder layer on the pooled output. Applied to a batch, each example gets the Linear of the
    layer it exited at (``route``, set by ``PatienceExitEncoder`` on every pass); without a route, the last one."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(linears)
        self.route: Tensor | None = None  # [batch] 1-based exit layer of each example of the current pass

    @property
    def num_labels(self) -> int:
        return self.linears[-1].out_features

    def forward(self, pooled: Tensor) -> Tensor:
        route = self.route
        if route is None:
            return self.linears[-1](pooled)
        if route.shape[0] != pooled.shape[0]:
            raise ValueError(f"{pooled.shape[0]} pooled outputs for a pass of {route.shape[0]} examples: the exit "
                             "classifiers follow the encoder's last pass")
        logits = pooled.new_empty(pooled.shape[0], self.num_labels)
        for layer in route.unique().tolist():
            rows = route == layer
            logits[rows] = self.linears[layer - 1](pooled[rows])
        return logits


def token_mask(attention_mask: Tensor | None) -> Tensor | None:
    """[batch, length] True for each example's real tokens, from the bidirectional mask the encoder's layers get
    (HF's ``create_bidirectional_mask``: None without padding, boolean for SDPA, additive 0 / -inf for eager)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 4:
        raise ValueError(f"mean pooling reads a [batch, 1, query, key] attention mask, got {type(attention_mask).__name__}"
                         f"{'' if not isinstance(attention_mask, Tensor) else tuple(attention_mask.shape)}")
    keys = attention_mask[:, 0, 0, :]  # bidirectional: every query sees the same keys
    return keys if keys.dtype == torch.bool else keys == 0


class MaskedMeanPooler(BertPooler):
    """BERT's pooler (dense + tanh, the same parameters and state-dict keys) on the mean of each example's real
    tokens instead of its ``[CLS]``: for encoders trained with mean pooling (sentence-transformers), whose lower
    layers' ``[CLS]`` carries almost nothing. The HF model calls its pooler with the hidden states only, so the
    encoder hands it the pass's token mask (``token_mask``, [batch, length]) before every call."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.token_mask: Tensor | None = None

    def pool(self, hidden_states: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            mean = hidden_states.mean(dim=1)
        else:
            weights = mask.unsqueeze(-1).to(hidden_states.dtype)
            mean = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return self.activation(self.dense(mean))

    def forward(self, hidden_states: Tensor) -> Tensor:
        mask = self.token_mask
        if mask is not None and mask.shape != hidden_states.shape[:2]:
            raise ValueError(f"a token mask of shape {tuple(mask.shape)} for hidden states {tuple(hidden_states.shape)}:"
                             " the mean pooler follows the encoder's last pass")
        return self.pool(hidden_states, mask)


def _pool(pooler: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None) -> Tensor:
    if isinstance(pooler, MaskedMeanPooler):
        return pooler.pool(hidden_states, token_mask(attention_mask))
    return pooler(hidden_states)


def _rows(value: Any, keep: Tensor) -> Any:
    """``value`` restricted to the kept examples when it is a tensor with the batch as first dimension."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == keep.shape[0]:
        return value[keep]
    return value


@register_module_kind("patience_exit_encoder", wraps=True)
class PatienceExitEncoder(nn.Module):
    """A BERT encoder with PABEE's patience rule: the encoder's layers, the (shared) pooler and one internal
    classifier per layer. In training mode every layer runs for every example (the internal classifiers are
    trained on all layers' outputs); in eval mode each example stops at its exit layer, recorded in
    ``exit_layers`` (1-based, [batch]) after each pass."""

    def __init__(
        self, layers: nn.ModuleList, pooler: nn.Module, classifiers: ExitClassifiers, patience: int,
        config: PretrainedConfig,
    ) -> None:
        super().__init__()
        if len(classifiers.linears) != len(layers):
            raise ValueError(f"{len(classifiers.linears)} internal classifiers for {len(layers)} layers")
        self.config = config
        self.layer = layers  # HF's name: the layers keep their state-dict keys and structure helpers find them
        self.pooler = pooler
        self.classifiers = classifiers
        self.patience = patience
        self.exit_layers: Tensor | None = None

    @property
    def patience(self) -> int:
        return self._patience

    @patience.setter
    def patience(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"patience must be a positive int, got {value!r}")
        self._patience = value

    @property
    def exits_early(self) -> bool:
        """Whether an example can leave before the last layer: only with ``patience <= depth - 2``."""
        return self.patience <= len(self.layer) - 2

    @property
    def pooling(self) -> str:
        return "mean" if isinstance(self.pooler, MaskedMeanPooler) else "cls"

    def artifact_spec(self) -> dict:
        return {"patience": self.patience, "num_labels": self.classifiers.num_labels, "pooling": self.pooling}

    @classmethod
    def from_artifact_spec(cls, spec: dict, wrapped: nn.Module) -> PatienceExitEncoder:
        """Around the config-built encoder ``wrapped``: its layers and config, a pooler and Linears to load."""
        config, depth = wrapped.config, len(wrapped.layer)
        linears = [nn.Linear(config.hidden_size, int(spec["num_labels"])) for _ in range(depth)]
        pooler = MaskedMeanPooler(config) if spec.get("pooling", "cls") == "mean" else BertPooler(config)
        return cls(wrapped.layer, pooler, ExitClassifiers(linears), int(spec["patience"]), config)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if encoder_hidden_states is not None or cache is not None:
            raise ValueError("early exit runs an encoder: no cross-attention inputs, no cache")
        batch, depth = hidden_states.shape[0], len(self.layer)
        if self.training or not self.exits_early:
            for layer in self.layer:
                hidden_states = layer(hidden_states, attention_mask, **kwargs)
            exited, exit_layers, route = hidden_states, hidden_states.new_full((batch,), depth, dtype=torch.long), None
        else:
            if torch.jit.is_tracing() or torch.compiler.is_exporting():
                raise RuntimeError("early exit shrinks the batch as examples leave: it has no static graph (a "
                                   f"patience of {depth - 1} or more, which never exits early, exports)")
            exited, exit_layers = self._forward_with_exits(hidden_states, attention_mask, kwargs)
            route = exit_layers
        if isinstance(self.pooler, MaskedMeanPooler):  # the model pools the returned states of the whole batch
            self.pooler.token_mask = token_mask(attention_mask)
        self.exit_layers = exit_layers
        self.classifiers.route = route
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=exited)

    def _forward_with_exits(
        self, hidden_states: Tensor, attention_mask: Tensor | None, kwargs: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Each example's hidden states from its exit layer, and that layer (1-based)."""
        batch, depth, device = hidden_states.shape[0], len(self.layer), hidden_states.device
        exited = torch.empty_like(hidden_states)
        exit_layers = torch.full((batch,), depth, dtype=torch.long, device=device)
        alive = torch.arange(batch, device=device)  # the examples still in the batch, as original positions
        streak = torch.zeros(batch, dtype=torch.long, device=device)  # consecutive repeats of the prediction
        previous: Tensor | None = None
        for j, layer in enumerate(self.layer, start=1):
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
            if j == depth:
                exited[alive] = hidden_states
                break
            prediction = self.classifiers.linears[j - 1](_pool(self.pooler, hidden_states, attention_mask)).argmax(-1)
            if previous is not None:
                streak = torch.where(prediction == previous, streak + 1, 0)
            previous = prediction
            done = streak >= self.patience
            if not bool(done.any()):
                continue
            exited[alive[done]] = hidden_states[done]
            exit_layers[alive[done]] = j
            keep = ~done
            if not bool(keep.any()):
                break
            alive, hidden_states, previous, streak = alive[keep], hidden_states[keep], previous[keep], streak[keep]
            attention_mask = _rows(attention_mask, keep)
            kwargs = {name: _rows(value, keep) for name, value in kwargs.items()}
        return exited, exit_layers


def check_early_exit_model(config: PretrainedConfig, key: str = "student") -> None:
    """Early exit reads the BERT head (pooler, one Linear); raises ConfigError for another architecture."""
    if config.model_type not in EARLY_EXIT_MODEL_TYPES:
        allowed = ", ".join(EARLY_EXIT_MODEL_TYPES)
        raise ConfigError(f"{key}.model_type", config.model_type,
                          f"a BERT-family encoder (model_type {allowed}): the internal classifiers share its pooler")


def add_internal_classifiers(model: PreTrainedModel, patience: int, pooling: str = "cls") -> PatienceExitEncoder:
    """Give ``model`` (a BERT classifier) an internal classifier per layer, in place: new Linears initialised as
    the model initialises its own for layers 1..L-1, the model's ``classifier`` for layer L; with ``pooling="mean"``
    the model's pooler (its weights kept) reads the mean of the real tokens instead of ``[CLS]``. The model's
    forward then exits early in eval mode; returns the new encoder."""
    check_early_exit_model(model.config)
    if pooling not in EXIT_POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(EXIT_POOLINGS)}, got {pooling!r}")
    base, head = structure.backbone(model), model.classifier
    new = [nn.Linear(head.in_features, head.out_features) for _ in range(structure.num_layers(model) - 1)]
    for linear in new:
        model._init_weights(linear)
    classifiers = ExitClassifiers([linear.to(head.weight) for linear in new] + [head])
    pooler = base.pooler
    if pooling == "mean":
        pooler = MaskedMeanPooler(model.config).to(head.weight)
        pooler.load_state_dict(base.pooler.state_dict())
        pooler.train(model.training)
    encoder = PatienceExitEncoder(base.encoder.layer, pooler, classifiers, patience, base.encoder.config)
    base.encoder, base.pooler, model.classifier = encoder.train(model.training), pooler, classifiers
    return encoder


def exit_encoder(model: PreTrainedModel) -> PatienceExitEncoder | None:
    """The model's early-exit encoder, or None for a model without internal classifiers."""
    encoder = getattr(structure.backbone(model), "encoder", None)
    return encoder if isinstance(encoder, PatienceExitEncoder) else None


def internal_logits(model: PreTrainedModel, hidden_states: Sequence[Tensor]) -> list[Tensor]:
    """Every layer's internal-classifier logits (dropout, as the reference trains them) from the model's
    ``hidden_states`` output (embeddings first, then one per layer); a mean pooler reads the token mask the
    encoder set on that pass."""
    encoder = exit_encoder(model)
    if encoder is None:
        raise ValueError("the model has no internal classifiers (add_internal_classifiers)")
    layers = hidden_states[1:]
    if len(layers) != len(encoder.classifiers.linears):
        raise ValueError(f"{len(layers)} layer outputs for {len(encoder.classifiers.linears)} internal classifiers")
    return [linear(model.dropout(encoder.pooler(h))) for linear, h in zip(encoder.classifiers.linears, layers)]
