"""ALBERT's factorized embeddings (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of
Language Representations", ICLR, §3.1) on a trained model: the ``V × H`` word-embedding table becomes a ``V × E``
table and an ``E × H`` projection, initialised from the table's truncated SVD, then recovery training.

    python train.py technique=embedding_factorization student=6L student.init_from=finetuned technique.rank=128

The embedding size ``E`` is the rank (``rank``, or ``rank_ratio``/``energy`` of the table's spectrum; ALBERT
uses 128 for ``H`` = 768). ALBERT trains the factorization from scratch in pre-training; starting from the SVD
of a trained table and recovering with distillation is the post-hoc form the survey describes. Only the word
embeddings are factorized (position and token-type tables are small). For small encoders the table is most of
the bytes (MiniLM-L6: 30,522 × 384 of 22.7 M parameters), so this is where their disk size goes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.factorized import FactorizedEmbedding, weight_spectrum
from slimnlp.techniques.base import ModelConfigs
from slimnlp.techniques.low_rank import FactorizeThenRecover

log = logging.getLogger(__name__)


class EmbeddingFactorization(FactorizeThenRecover):
    @classmethod
    def check_models(cls, models: ModelConfigs, rank: int | None = None, **_: Any) -> None:
        if rank is not None and rank >= models.student.hidden_size:
            raise ConfigError("technique.rank", rank, f"below student.hidden_size = {models.student.hidden_size} "
                              "(the embedding size E of a V x E table and an E x H projection)")

    @torch.no_grad()
    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        owner = structure.embeddings(self.student)
        table = owner.word_embeddings
        if not isinstance(table, nn.Embedding):
            raise ConfigError("student", type(table).__name__, "a student whose word embeddings are one nn.Embedding "
                              "(this one is already factorized)")
        spectrum = weight_spectrum(table.weight)
        rank = self.rank_of(spectrum)
        owner.word_embeddings = FactorizedEmbedding.from_embedding(table, spectrum, rank)
        log.info("embedding_factorization: %d x %d table -> %d x %d and %d x %d", table.num_embeddings,
                 table.embedding_dim, table.num_embeddings, rank, rank, table.embedding_dim)
        return {}

    def compression_metrics(self) -> dict[str, float]:
        table = structure.embeddings(self.student).word_embeddings
        if not isinstance(table, FactorizedEmbedding):
            return {}
        dense = table.num_embeddings * table.embedding_dim
        return {"compress/embedding_rank": float(table.rank),
                "compress/embedding_weight_fraction": table.rank * (table.num_embeddings + table.embedding_dim) / dense}
