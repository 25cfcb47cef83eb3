"""Load classifiers and tokenizers from resolved sources (see ``assets.resolve_pretrained``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from slimnlp.errors import ConfigError

log = logging.getLogger(__name__)

# transformers' load report and attention-switch warnings come from this logger.
_TRANSFORMERS_LOGGER = "transformers.modeling_utils"


def load_classifier(
    source: str,
    num_labels: int,
    attn_implementation: str = "sdpa",
    label_names: list[str] | None = None,
) -> PreTrainedModel:
    """A sequence classifier with ``num_labels`` outputs; a new head when the checkpoint has none.

    A checkpoint fine-tuned for another label count is refused rather than silently given a new head.
    transformers' load report (a warning table on every head-less load) is replaced by a warning naming only
    the model keys missing from the checkpoint *besides* the expected new head (a real problem), and an info
    line for checkpoint keys the classifier does not use (e.g. the pooler of MPNet/RoBERTa checkpoints).
    The report still shows when loading fails, since it explains why.
    """
    config = AutoConfig.from_pretrained(source)
    if _has_classifier_head(config) and config.num_labels != num_labels:
        raise ConfigError(
            "num_labels",
            num_labels,
            f"{source} was fine-tuned for {config.num_labels} labels; use a matching task",
        )
    config.num_labels = num_labels
    if label_names is not None:
        if len(label_names) != num_labels:
            raise ConfigError("label_names", list(label_names), f"{num_labels} names, one per label")
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
    with _held_back("LOAD REPORT"):
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, output_loading_info=True
        )
    head = {k for k in model.state_dict() if not k.startswith(f"{model.base_model_prefix}.")}
    if missing := sorted(set(info["missing_keys"]) - head):
        log.warning(
            "loading %s: weights missing from the checkpoint, left random: %s", source, ", ".join(missing)
        )
    if unused := sorted(info["unexpected_keys"]):
        log.info("loading %s: checkpoint weights the classifier does not use: %s", source, ", ".join(unused))
    set_attention_implementation(model, attn_implementation)
    return model


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(source)


def set_attention_implementation(model: PreTrainedModel, impl: str) -> str:
    """Switch the attention kernel in place and return the one in effect.

    Only ``eager`` materializes attention matrices: with ``sdpa``, transformers 5 answers
    ``output_attentions=True`` with ``attentions=()`` (and one log line), so attention-based distillation
    must ask for ``eager``. Architectures without transformers' AttentionInterface (MPNet, DeBERTa-v2) are
    eager-only; asking them for ``sdpa`` keeps ``eager`` (logged at info level, not as transformers' warning).
    """
    if model.config._attn_implementation != impl:
        try:
            with _held_back("does not support setting its attention implementation"):
                model.set_attn_implementation(impl)
        except (ValueError, ImportError) as err:
            first_line = str(err).splitlines()[0]
            raise ConfigError("attn_implementation", impl, f"eager or sdpa ({first_line})") from None
    actual = model.config._attn_implementation
    if actual != impl:
        log.info("%s only supports %s attention; keeping it", type(model).__name__, actual)
    return actual


def _has_classifier_head(config: PretrainedConfig) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or ())


class _Hold(logging.Filter):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker, self.records = marker, []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.marker in record.getMessage():
            self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def _held_back(marker: str) -> Iterator[None]:
    """Hold back transformers warnings containing ``marker`` (slimnlp logs its own lines instead); release
    them if the block fails, since they may explain why."""
    logger, held = logging.getLogger(_TRANSFORMERS_LOGGER), _Hold(marker)
    logger.addFilter(held)
    try:
        yield
    except Exception:
        logger.removeFilter(held)
        for record in held.records:
            logger.handle(record)
        raise
    finally:
        logger.removeFilter(held)
