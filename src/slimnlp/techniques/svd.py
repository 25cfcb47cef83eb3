"""Truncated-SVD factorization of the encoder's Linears, then recovery training (Noach & Goldberg 2020,
"Compressing Pre-trained Language Models by Matrix Decomposition", AACL): each weight ``W ≈ B·A`` from its
``r`` leading singular triplets (the best rank-``r`` approximation of the weight, Eckart–Young), the singular
values split evenly between the factors, then fine-tuning or distillation from the dense fine-tuned model.

    python train.py technique=svd student=6L student.init_from=finetuned technique.rank_ratio=0.25

Noach & Goldberg factorize a fine-tuned BERT's matrices and recover with distillation (their "feature
distillation" variant adds hidden-state losses; here logits only, ``technique.alpha``/``temperature``). The
stages and rank choices are those of ``slimnlp.techniques.low_rank``.
"""

from __future__ import annotations

from slimnlp.techniques.low_rank import LowRankFactorization


class TruncatedSVD(LowRankFactorization):
    """Plain SVD of the weights: ``LowRankFactorization`` as it is (the data-free baseline DRONE is judged by)."""
