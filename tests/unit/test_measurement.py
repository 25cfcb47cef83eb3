"""The measurement suite's pieces on tiny models: FLOPs against the analytic count, parameter counts, loyalty,
latency statistics, memory, the ONNX export and codecarbon without a network."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from transformers import BertConfig, BertForSequenceClassification

from model_surgery import factorize, prune_heads, share_layers, slice_ffn
from slimnlp.metrics.efficiency import parameter_counts
from slimnlp.metrics.energy import EnergyMeter
from slimnlp.metrics.fidelity import LabelLoyalty, ProbabilityLoyalty, TeacherStudentKL, kl_per_example
from slimnlp.metrics.flops import bert_layer_flops, flops_per_example
from slimnlp.metrics.latency import interleaved_times_ms, percentiles, torch_threads
from slimnlp.metrics.memory import peak_memory_mb
from slimnlp.metrics.onnx_runtime import OrtClassifier, export_onnx, max_logit_difference
from slimnlp.models import structure
from slimnlp.models.loading import set_attention_implementation

H, F, HEADS, N, LABELS = 64, 256, 4, 24, 3


def tiny_bert(layers: int = 2, attention: str = "sdpa") -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500,
        hidden_size=H,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=F,
        num_labels=LABELS,
        max_position_embeddings=64,
    )
    model = BertForSequenceClassification(config).eval()
    set_attention_implementation(model, attention)
    return model


def batch(size: int = 2, length: int = N) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 500, (size, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def head_flops(model) -> float:
    """Pooler and classifier: what the model counts besides its encoder layers."""
    return 2 * H * H + 2 * H * LABELS


# --- FLOPs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_one_bert_layer_matches_the_analytic_count(attention):
    model = tiny_bert(layers=1, attention=attention)
    counted = flops_per_example(model, batch())
    expected = bert_layer_flops(N, H, F) + head_flops(model)
    assert counted == pytest.approx(expected, rel=0.01)
    # and the attention term is really counted under sdpa (the CPU kernel has no formula in torch itself)
    assert counted - head_flops(model) > 2 * N * (4 * H * H + 2 * H * F)


def test_flops_per_example_do_not_depend_on_the_batch_size():
    model = tiny_bert()
    assert flops_per_example(model, batch(1)) == flops_per_example(model, batch(4))


def test_pruned_sliced_and_factorized_models_count_what_the_arithmetic_says():
    base = flops_per_example(tiny_bert(), batch())
    d = H // HEADS

    pruned = tiny_bert()
    prune_heads(pruned, layer=0, heads=[0, 1])  # 2 of 4 heads: Q, K, V, O and attention on half the width
    kept = (HEADS - 2) * d
    saved = 2 * N * (4 * H * (H - kept)) + 4 * N * N * (H - kept)
    assert flops_per_example(pruned, batch()) == pytest.approx(base - saved, rel=1e-6)

    sliced = tiny_bert()
    slice_ffn(sliced, layer=1, keep=F // 4)
    assert flops_per_example(sliced, batch()) == pytest.approx(base - 2 * N * 2 * H * (F - F // 4), rel=1e-6)

    factorized = tiny_bert()
    factorize(factorized, layer=0, rank=8)  # H x F becomes H x 8 then 8 x F
    assert flops_per_example(factorized, batch()) == pytest.approx(
        base - 2 * N * H * F + 2 * N * (H * 8 + 8 * F), rel=1e-6
    )


# --- parameters ----------------------------------------------------------------------------------------------


def test_parameter_counts_count_shared_weights_once_and_zeros_apart():
    model = tiny_bert()
    counts = parameter_counts(model)
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters() if p.ndim == 2)
    assert counts["params"] == sum(p.numel() for p in model.parameters())
    assert counts["params_nonembedding"] == counts["params"] - embeddings
    zeros = sum(int((p == 0).sum()) for p in model.parameters())  # biases start at zero
    assert 0 < zeros < counts["params"] * 0.05
    assert counts["nonzero_params"] == counts["params"] - zeros

    layer_size = sum(p.numel() for p in structure.encoder_layers(model)[1].parameters())
    share_layers(model, source=0, target=1)
    assert parameter_counts(model)["params"] == counts["params"] - layer_size

    weight = structure.encoder_layers(model)[0].intermediate.dense.weight
    with torch.no_grad():
        weight[:, : H // 2] = 0
    zeros_shared = sum(int((p == 0).sum()) for p in model.parameters())
    assert parameter_counts(model)["nonzero_params"] == counts["params"] - layer_size - zeros_shared
    assert zeros_shared >= F * H // 2


# --- loyalty -------------------------------------------------------------------------------------------------


def test_identical_models_are_perfectly_loyal():
    logits = torch.randn(16, LABELS, generator=torch.Generator().manual_seed(0))
    values = []
    for metric in (LabelLoyalty(), ProbabilityLoyalty(), TeacherStudentKL()):
        metric.update(logits, logits.clone())
        values.append(float(metric.compute()))
    assert values == pytest.approx([1.0, 1.0, 0.0], abs=1e-6)


def test_loyalty_on_hand_made_distributions():
    p_T = torch.tensor([[0.75, 0.2, 0.05], [0.5, 0.5, 0.0 + 1e-12]])
    p_S = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    logits_T, logits_S = p_T.log(), p_S.log()
    expected_loyalty = np.mean(
        [1 - jensenshannon(t, s) for t, s in zip(p_T.numpy(), p_S.numpy(), strict=True)]
    )
    expected_kl = np.mean(
        [(t * np.log(t / s)).sum() for t, s in zip(p_T.double().numpy(), p_S.double().numpy(), strict=True)]
    )
    loyalty, kl, label = ProbabilityLoyalty(), TeacherStudentKL(), LabelLoyalty()
    loyalty.update(logits_T, logits_S)
    kl.update(logits_T, logits_S)
    label.update(logits_T, logits_S)
    assert float(loyalty.compute()) == pytest.approx(expected_loyalty, abs=1e-5)
    assert float(kl.compute()) == pytest.approx(expected_kl, abs=1e-5)
    # the first row by hand: 0.75 ln(0.75/0.8) + 0.2 ln 2 + 0.05 ln 0.5 = -0.04840 + 0.13863 - 0.03466
    assert float(kl_per_example(logits_T, logits_S)[0]) == pytest.approx(0.05557, abs=1e-4)
    assert float(label.compute()) == 0.5  # row 1: both argmax 0; row 2: teacher 0 (tie broken low), student 1


# --- latency and memory --------------------------------------------------------------------------------------


def test_interleaved_timing_ranks_a_slower_call_slower():
    times = interleaved_times_ms({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.005)}, 5, 1)
    assert len(times["fast"]) == len(times["slow"]) == 5
    assert percentiles(times["slow"])["p50"] > 3 * percentiles(times["fast"])["p50"]


def test_percentiles_are_the_median_and_the_90th():
    assert percentiles([1.0, 2.0, 3.0, 4.0, 100.0]) == {"p50": 3.0, "p90": pytest.approx(61.6)}


def test_thread_count_is_set_and_restored():
    before = torch.get_num_threads()
    with torch_threads(1) as threads:
        assert threads == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_peak_memory_sees_a_large_allocation():
    def allocate() -> None:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
        time.sleep(0.02)
        del block

    assert 48 < peak_memory_mb(allocate, passes=1) < 200
    assert peak_memory_mb(lambda: time.sleep(0.01), passes=1) < 16


# --- ONNX Runtime --------------------------------------------------------------------------------------------


def test_onnx_export_matches_torch_at_other_shapes(tmp_path):
    model = tiny_bert()
    path = export_onnx(model, batch(2, 16), tmp_path / "model.onnx")
    runtime = OrtClassifier(path, threads=1)
    other = batch(5, 20)
    other["attention_mask"][1, 10:] = 0  # padding is honoured
    assert max_logit_difference(model, runtime, other) < 1e-4


# --- energy --------------------------------------------------------------------------------------------------


def test_codecarbon_runs_without_a_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("the network is unavailable in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    start = time.perf_counter()
    meter = EnergyMeter("FRA", measure_power_secs=1)
    with meter.task("small") as small:
        sum(i * i for i in range(500_000))
    with meter.task("large") as large:
        sum(i * i for i in range(4_000_000))
    assert time.perf_counter() - start < 30  # no wait for a lookup that cannot succeed
    assert small.kwh is not None and large.kwh is not None and large.kwh > small.kwh > 0
    assert large.co2_kg is not None and large.co2_kg > 0
    assert meter.method


def test_disabled_energy_meter_measures_nothing():
    meter = EnergyMeter("USA", enabled=False)
    with meter.task("train") as energy:
        pass
    assert energy.kwh is None and energy.co2_kg is None and meter.method is None
