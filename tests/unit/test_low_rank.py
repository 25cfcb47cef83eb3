"""Low-rank factorization: SVD and DRONE factors, the rank rules, and DRONE's promise — smaller output error
than SVD's on the data it was fitted to, at equal rank."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.modules.factorized import FactorizedLinear, output_spectrum, weight_spectrum
from slimnlp.techniques.drone import input_grams
from slimnlp.techniques.low_rank import LowRankFactorization, check_rank_choice, pays


def test_full_rank_factors_reproduce_the_layer_both_ways():
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    x = torch.randn(5, 24)
    X = torch.randn(24, 300)
    for spectrum in (weight_spectrum(linear.weight), output_spectrum(linear.weight, X @ X.T)):
        layer = FactorizedLinear.from_factors(*spectrum.factors(24), linear.bias)
        torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=1e-4)


def test_drone_output_error_is_at_most_svds_on_the_models_own_activations(tiny_bert, tiny_batch):
    linears = [m for m in tiny_bert.bert.encoder.modules() if isinstance(m, nn.Linear)]
    grams = input_grams(tiny_bert, linears, [tiny_batch, tiny_batch])
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(id(mod), args[0])) for m in linears]
    with torch.no_grad():
        tiny_bert(**model_inputs(tiny_batch))
    for h in hooks:
        h.remove()
    mask = tiny_batch["attention_mask"].bool()
    wins = 0
    for linear in linears:
        X = inputs[id(linear)][mask].double().T  # real tokens only, as the Gram matrix
        # the hooks saw the batch twice: the Gram matrix is twice this batch's
        torch.testing.assert_close(grams[id(linear)], 2 * X @ X.T)
        for rank in (2, 8):
            errors = []
            for spectrum in (weight_spectrum(linear.weight), output_spectrum(linear.weight, grams[id(linear)])):
                A, B = spectrum.factors(rank)
                errors.append(float(((linear.weight.detach().double() - B.double() @ A.double()) @ X).norm()))
            assert errors[1] <= errors[0] * (1 + 1e-6)
            wins += errors[1] < 0.95 * errors[0]
    assert wins > len(linears)  # and usually clearly smaller, not just equal


def test_energy_picks_the_smallest_rank_keeping_that_share():
    weight = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5]))  # squared spectrum 9, 4, 1, 0.25 of 14.25
    spectrum = weight_spectrum(weight)
    assert [spectrum.rank_for_energy(e) for e in (0.5, 9 / 14.25, 0.9, 0.92, 0.99, 1.0)] == [1, 1, 2, 3, 4, 4]


def test_a_rank_pays_only_below_the_break_even():
    linear = nn.Linear(384, 1536)
    assert pays(307, linear) and not pays(308, linear)  # 384·1536 / (384 + 1536) = 307.2


@pytest.mark.parametrize(
    ("given", "message"),
    [({}, r"exactly one"), ({"rank": 4, "rank_ratio": 0.5}, r"exactly one"), ({"rank": 0}, r"technique\.rank.*>= 1"),
     ({"rank_ratio": 1.5}, r"technique\.rank_ratio.*\(0, 1\]"), ({"energy": 0}, r"technique\.energy")],
)
def test_rank_choices_are_checked_in_one_line(given, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_rank_choice(given.get("rank"), given.get("rank_ratio"), given.get("energy"))
    assert "\n" not in str(err.value)


def test_stages_factorize_then_recover():
    stages = LowRankFactorization.stages(**LowRankFactorization.defaults_filled(rank=4, recover_epochs=3))
    assert [(s.name, s.hparams, s.max_epochs) for s in stages] == [
        ("factorize", {"phase": "factorize"}, None), ("recover", {"phase": "recover"}, 3)]
    assert LowRankFactorization.requirements(phase="factorize").trains is False
    assert LowRankFactorization.requirements(phase="recover", recover="kd").teacher
    assert [s.name for s in LowRankFactorization.stages(recover="none")] == ["factorize"]


def test_a_factorized_embedding_at_full_rank_is_the_table_and_shrinks_below_it(tiny_bert, tiny_batch, tmp_path):
    from slimnlp.artifacts import load_student, save_student
    from slimnlp.metrics.efficiency import parameter_counts
    from slimnlp.modules.factorized import FactorizedEmbedding

    table = tiny_bert.bert.embeddings.word_embeddings
    ids = tiny_batch["input_ids"]
    full = FactorizedEmbedding.from_embedding(table, weight_spectrum(table.weight), 32)
    torch.testing.assert_close(full(ids), table(ids), atol=1e-5, rtol=1e-4)
    before = parameter_counts(tiny_bert)
    tiny_bert.bert.embeddings.word_embeddings = FactorizedEmbedding.from_embedding(
        table, weight_spectrum(table.weight), 8)
    after = parameter_counts(tiny_bert)
    assert before["params"] - after["params"] == table.num_embeddings * (32 - 8) - 8 * 32
    assert after["params_nonembedding"] == before["params_nonembedding"]  # the projection counts as embedding
    with torch.no_grad():
        logits = tiny_bert(**model_inputs(tiny_batch)).logits
        reloaded = load_student(save_student(tiny_bert, tmp_path / "s"))(**model_inputs(tiny_batch)).logits
    torch.testing.assert_close(reloaded, logits)


def test_a_factorized_embedding_whose_table_a_later_stage_made_int8_saves_and_reloads_exactly(tiny_bert, tiny_batch,
                                                                                                 tmp_path):
    """factorize -> quantize: the int8 table inside the factorized embedding is a nested replacement of its own,
    so the artifact reloads to the same logits and stores the table as int8 rows."""
    import json
    from pathlib import Path

    from slimnlp.artifacts import MANIFEST_NAME, load_student, save_student
    from slimnlp.modules.factorized import FactorizedEmbedding
    from slimnlp.modules.quantization import QuantizedEmbedding

    table = tiny_bert.bert.embeddings.word_embeddings
    factorized = FactorizedEmbedding.from_embedding(table, weight_spectrum(table.weight), 8)
    factorized.table = QuantizedEmbedding.from_embedding(factorized.table)
    tiny_bert.bert.embeddings.word_embeddings = factorized
    assert factorized.weight.shape == table.weight.shape  # the V x H view reads the int8 rows
    with torch.no_grad():
        logits = tiny_bert(**model_inputs(tiny_batch)).logits
        folder = save_student(tiny_bert, tmp_path / "s")
        reloaded = load_student(folder)
        torch.testing.assert_close(reloaded(**model_inputs(tiny_batch)).logits, logits)
    assert isinstance(reloaded.bert.embeddings.word_embeddings.table, QuantizedEmbedding)
    manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    assert {e["kind"] for e in manifest["replacements"].values()} >= {"factorized_embedding", "quantized_embedding"}
