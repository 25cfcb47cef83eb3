"""A weight stored in coded form (codebook indices, sign planes …) and decoded to a dense tensor once, on the
first forward pass; the cache is dropped whenever the stored codes may change (a state-dict load, a move to
another device or dtype), so it never outlives them."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class DecodedOnce(nn.Module):
    """Mixin for modules with ``dense_weight()``: ``decoded_weight()`` is that weight, computed once."""

    _weight: Tensor | None = None

    def dense_weight(self) -> Tensor:
        raise NotImplementedError

    def decoded_weight(self) -> Tensor:
        if self._weight is None:
            self._weight = self.dense_weight()
        return self._weight

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._weight = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._weight = None
        return super()._apply(fn, recurse)
