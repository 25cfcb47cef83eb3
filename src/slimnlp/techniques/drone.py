"""DRONE (Chen, Yu, Dhillon & Hsieh 2021, "DRONE: Data-aware Low-rank Compression for Large NLP Models",
NeurIPS): factorize each Linear so that its *outputs* on real inputs change least, not its weights.

    python train.py technique=drone student=6L student.init_from=finetuned technique.rank_ratio=0.25

For a weight ``W`` and calibration inputs ``X`` (the layer's inputs on ``calibration.num_samples`` training
examples, padding tokens left out), the rank-``r`` ``M`` minimising ``‖W·X − M·X‖_F`` is the truncated SVD of
``W·G^{1/2}`` mapped back by ``G^{-1/2}``, ``G = X·Xᵀ`` (the paper's closed form, there written with the SVD of
``X``; ``slimnlp.modules.factorized.output_spectrum``). Where the inputs are concentrated in few directions, this
keeps the directions the data uses and drops the ones it does not, which the weight's own SVD cannot see.
The Gram matrices are accumulated on the student's own (dense, unfactorized) activations, one pass over the
calibration batches; ``energy`` is read on the spectrum of ``W·G^{1/2}``. Then recovery as for SVD.

No code was released with the paper; deviations from it: the ranks are set by ``rank``/``rank_ratio``/``energy``
like SVD's (the paper also searches per-layer ranks under a global speed-up budget: here the comparison with
SVD is at equal rank, as the table needs), each Linear is factorized on its own (the paper's joint treatment
of the attention's ``W_Q·W_Kᵀ`` product is not implemented), and ``damping`` (a ridge on ``G``, relative to its
mean eigenvalue) keeps the inverse square root finite.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.modules.factorized import Spectrum, output_spectrum
from slimnlp.techniques.low_rank import LowRankFactorization


class DRONE(LowRankFactorization):
    def __init__(self, damping: float = 1e-6, **base: Any) -> None:
        super().__init__(**base)
        self.damping = damping

    @classmethod
    def validate_hparams(cls, damping: Any = 1e-6, **rest: Any) -> None:
        if not isinstance(damping, int | float) or isinstance(damping, bool) or damping < 0:
            raise ConfigError("technique.damping", damping, "a number >= 0 (the ridge on the inputs' Gram matrix)")
        super().validate_hparams(**rest)

    def spectra(self, linears: list[tuple[str, nn.Linear]],
                calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, Spectrum]:
        grams = input_grams(self.student, [m for _, m in linears], calibration)
        return {path: output_spectrum(m.weight, grams[id(m)], self.damping) for path, m in linears}


@torch.no_grad()
def input_grams(model: nn.Module, linears: Sequence[nn.Linear],
                calibration: Iterable[Mapping[str, Tensor]]) -> dict[int, Tensor]:
    """``X·Xᵀ`` (float64, [in, in]) of each Linear's inputs over the calibration batches, real tokens only;
    keyed by ``id(linear)``."""
    grams = {id(m): torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=m.weight.device)
             for m in linears}
    tokens: dict[str, Tensor] = {}

    def accumulate(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        x = x[tokens["mask"]] if x.dim() == 3 and x.shape[:2] == tokens["mask"].shape else x.reshape(-1, x.shape[-1])
        grams[id(module)] += x.double().T @ x.double()

    hooks = [m.register_forward_pre_hook(accumulate) for m in linears]
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for batch in calibration:
            tokens["mask"] = batch["attention_mask"].bool()
            model(**model_inputs(batch))
            seen += 1
        if not seen:
            raise ValueError("DRONE needs calibration batches: none were given")
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return grams
