"""What a batch holds and what of it an encoder takes; shared by techniques, metrics and measurement."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The keys of a batch that an HF encoder takes (drops labels, example ids)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}
