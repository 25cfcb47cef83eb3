"""Magnitude pruning during fine-tuning (Zhu & Gupta 2017, "To prune, or not to prune"; the baseline of Sanh
et al. 2020): the weights smallest in ``|W|`` are masked, the fraction growing along the sparsity ramp.

As in the authors' ``emmental`` ``MagnitudeBinarizer``, the mask is recomputed from the current weights at
every forward (a pruned weight keeps its value and can return if kept weights shrink below it, while the
ramp allows), and the ranking is per matrix unless ``scope=global``. ``schedule=constant`` prunes to the
target at the first step (one-shot); the default is the cubic ramp of ``slimnlp.techniques.pruning``.
"""

from __future__ import annotations

from torch import nn

from slimnlp.modules.masking import MagnitudeMask
from slimnlp.techniques.pruning import TopKPruning


class MagnitudePruning(TopKPruning):
    def make_mask(self, weight: nn.Parameter) -> MagnitudeMask:
        return MagnitudeMask()
