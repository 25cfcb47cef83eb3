"""Latency-target pruning: the knapsack is exact, the latency table is well formed and sees real savings, and
pruning to a table's target gates the right counts, never growing a layer back; bad input fails early."""

import copy
import itertools
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from conftest import technique_kwargs
from slimnlp.errors import ConfigError
from slimnlp.models.latency_table import (
    LatencyTable,
    ffn_grid,
    measure_latency_table,
    monotone_savings,
    savings_scale,
)
from slimnlp.techniques.latency_pruning import LatencyTargetPruning, Option, choose_widths, layer_options


def _brute_force(options, required):
    best = None
    for combo in itertools.product(*[range(len(o)) for o in options]):
        saving = sum(options[c][j].saving_ms for c, j in enumerate(combo))
        removed = sum(options[c][j].removed for c, j in enumerate(combo))
        if saving >= required and (best is None or removed < best):
            best = removed
    return best


@pytest.mark.parametrize("seed", range(6))
def test_choose_widths_finds_the_brute_force_optimum(seed):
    """Integer savings with a step of 1 ms: the discretised DP is exact, so it must match enumeration."""
    rng = random.Random(seed)
    options = [[Option(w, float(rng.randint(0, 6) if w < 4 else 0), rng.random() * (4 - w)) for w in range(1, 5)]
               for _ in range(4)]
    required = 9.0
    chosen = choose_widths(options, required, bins=9)
    best = _brute_force(options, required)
    if best is None:
        assert chosen is None
        return
    assert sum(options[c][j].saving_ms for c, j in enumerate(chosen)) >= required
    assert sum(options[c][j].removed for c, j in enumerate(chosen)) == pytest.approx(best)


def test_choose_widths_meets_the_budget_with_real_valued_savings_and_says_when_it_cannot():
    rng = random.Random(0)
    options = [[Option(w, rng.uniform(0, 3) * (4 - w), rng.random() * (4 - w)) for w in range(1, 5)] for _ in range(5)]
    chosen = choose_widths(options, 8.0)
    assert chosen is not None and sum(options[c][j].saving_ms for c, j in enumerate(chosen)) >= 8.0
    most = sum(max(o.saving_ms for o in opts) for opts in options)
    assert choose_widths(options, most + 0.1) is None
    # nothing to save: every component keeps the option removing the least (its full width)
    assert choose_widths(options, 0.0) == [3] * 5


def test_monotone_savings_and_the_ffn_grid():
    assert monotone_savings([5.0, 6.0, 2.0, -1.0, 0.3]) == [6.0, 6.0, 2.0, 0.3, 0.0]
    assert ffn_grid(1536, 16) == list(range(96, 1537, 96))
    assert ffn_grid(10, 4) == [2, 5, 8, 10]


def test_savings_are_scaled_to_what_a_layer_and_the_whole_model_can_save():
    assert savings_scale(3.0, layer_ms=4.0, layers=4, prunable_ms=20.0) == 1.0  # plausible: kept as measured
    assert savings_scale(8.0, layer_ms=4.0, layers=4, prunable_ms=20.0) == pytest.approx(0.5)  # > one layer's cost
    # noise that made each layer look dearer than the dense model allows: 4 x 4 ms of savings in 10 ms of layers
    assert savings_scale(4.0, layer_ms=4.0, layers=4, prunable_ms=10.0) == pytest.approx(10.0 / 16.0)
    assert savings_scale(4.0, layer_ms=4.0, layers=4, prunable_ms=-1.0) == 0.0


def test_layer_options_remove_the_least_important_of_what_is_still_on():
    importance = torch.tensor([0.5, 0.1, 0.9, 0.2])
    gates = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the fourth is already off: it cannot be removed again
    options = layer_options(importance, gates, [1, 2, 3, 4], [3.0, 2.0, 0.5, 0.0])
    assert [o.width for o in options] == [1, 2, 3]  # a layer never grows back to 4
    assert [o.removed for o in options] == pytest.approx([0.6, 0.1, 0.0])


def _wide_bert(vocab_size: int):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=64, num_labels=3)
    return AutoModelForSequenceClassification.from_config(config)


def test_the_measured_table_is_well_formed_and_sees_a_narrow_ffn_save_time(tokenizer):
    model = _wide_bert(tokenizer.vocab_size)
    batch = {"input_ids": torch.randint(5, 1000, (32, 64)), "attention_mask": torch.ones(32, 64, dtype=torch.long)}
    table = measure_latency_table(model, batch, ffn_levels=4, repeats=5, threads=1)
    assert table.head_widths == [1, 2, 3, 4] and table.ffn_widths == [128, 256, 384, 512]
    for savings in (table.head_saving_ms, table.ffn_saving_ms):
        assert savings[-1] == 0.0 and all(a >= b >= 0 for a, b in itertools.pairwise(savings))
    assert table.ffn_saving_ms[0] > 0  # a quarter of a 512-wide FFN over 2048 tokens is measurably faster
    assert table.head_saving_ms[0] + table.ffn_saving_ms[0] <= table.layer_ms <= table.dense_ms
    assert 2 * (table.head_saving_ms[0] + table.ffn_saving_ms[0]) < table.dense_ms  # embeddings are never pruned
    assert table.predicted_ms([4, 4], [512, 512]) == table.dense_ms
    # the hook-free copy the table times is the caller's model, unchanged
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in _wide_bert(tokenizer.vocab_size).parameters())


def _linear_table() -> LatencyTable:
    """Each removed head saves 1 ms, each removed quarter of the FFN 2 ms, on top of a 100 ms dense model."""
    return LatencyTable(dense_ms=100.0, layer_ms=20.0, head_widths=[1, 2, 3, 4], head_saving_ms=[3.0, 2.0, 1.0, 0.0],
                        ffn_widths=[16, 32, 48, 64], ffn_saving_ms=[6.0, 4.0, 2.0, 0.0])


def test_prune_to_a_target_gates_per_layer_counts_that_meet_it_and_only_ever_removes(tiny_bert):
    technique = LatencyTargetPruning(**technique_kwargs(tiny_bert), target_speedup=1.25, distill=False)
    table = _linear_table()
    heads, units = torch.rand(4, 4), torch.rand(4, 64)
    technique.prune_to(table, 1.1, (heads, units))
    kept_heads, kept_units = technique.gates.heads.sum(1).tolist(), technique.gates.units.sum(1).tolist()
    first = table.predicted_ms([int(k) for k in kept_heads], [int(u) for u in kept_units])
    assert table.dense_ms / first >= 1.1 and float(technique.predicted_speedup) == pytest.approx(table.dense_ms / first)
    assert all(u in table.ffn_widths for u in kept_units)
    before = technique.gates.heads.clone(), technique.gates.units.clone()
    technique.prune_to(table, 1.25, (torch.rand(4, 4), torch.rand(4, 64)))  # new importances, a higher target
    assert table.dense_ms / table.predicted_ms([int(k) for k in technique.gates.heads.sum(1)],
                                               [int(u) for u in technique.gates.units.sum(1)]) >= 1.25
    assert bool((technique.gates.heads <= before[0]).all()) and bool((technique.gates.units <= before[1]).all())
    with pytest.raises(ConfigError, match=r"technique\.target_speedup.*at most 1\.56x"):  # 100 / (100 - 4·(3+6))
        technique.prune_to(table, 1.6, (heads, units))


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("target_speedup", 1.0, "> 1"), ("target_speedup", "fast", "> 1"), ("rounds", 0, "positive integer"),
    ("ffn_levels", 2.5, "positive integer"), ("latency_threads", 0, "positive integer or null"),
])
def test_bad_latency_settings_fail_in_one_line(key, value, allowed):
    hparams = LatencyTargetPruning.defaults_filled(**{key: value})
    with pytest.raises(ConfigError, match=rf"technique\.{key}.*{allowed}"):
        LatencyTargetPruning.validate_hparams(**hparams)


def test_the_clock_sees_a_model_sliced_to_a_quarter_run_faster(tokenizer):
    from slimnlp.models.latency_table import measured_speedup
    from slimnlp.modules.gates import HeadAndUnitGates

    dense = _wide_bert(tokenizer.vocab_size)
    gates = HeadAndUnitGates(dense)
    gates.heads[:, 1:] = 0
    gates.units[:, 128:] = 0
    sliced = gates.materialize(copy.deepcopy(dense))
    batch = {"input_ids": torch.randint(5, 1000, (32, 64)), "attention_mask": torch.ones(32, 64, dtype=torch.long)}
    assert measured_speedup(dense, sliced, batch, repeats=5, threads=1) > 1.3
