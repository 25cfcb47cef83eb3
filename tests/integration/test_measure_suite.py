"""The whole measurement suite through train.py on the tiny setup: every metric of the measurement issue is
in results.json, sane, and printed; an OOD set with another label space fails before anything trains."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import run_tiny, write_corpus

from slimnlp.errors import ConfigError
from slimnlp.summary import format_summary


def full_suite(ood_csv) -> list[str]:
    return [
        "measure.runtimes=[torch,onnxruntime,onnxruntime_int8]",
        "measure.batch_sizes=[1,8]",
        "energy.enabled=true",
        "eval.robustness.attacks=[typo,word]",
        "eval.robustness.num_examples=40",
        "eval.robustness.rate=0.3",
        f"eval.ood=[{{option:local,task_name:tiny_ood,source:{{path:'{ood_csv}'}}}}]",
    ]


@pytest.fixture(scope="module")
def suite_run(tiny_setup):
    root = tiny_setup[0]
    ood = write_corpus(root / "ood.csv", n=90, seed=7)  # the same cue words in other filler: an easy shift
    results = run_tiny(tiny_setup, "suite", "technique=kd", "student=2L", *full_suite(ood))
    return results, root / "outputs" / "runs" / "suite"


def test_every_measurement_is_recorded(suite_run):
    results, run_dir = suite_run
    m = results["metrics"]
    for key in (
        "eff/params", "eff/params_nonembedding", "eff/nonzero_params", "eff/flops", "teacher/eff/flops",
        "eff/disk_bytes", "teacher/eff/disk_bytes", "eff/disk_compression", "eff/threads",
        "eff/latency_ms_b1", "eff/latency_ms_b1_p90", "eff/latency_ms_b8", "eff/latency_ms_b8_p90",
        "teacher/eff/latency_ms_b1", "eff/speedup_b1", "eff/speedup_b8", "eff/speedup",
        "eff/peak_mem_mb", "teacher/eff/peak_mem_mb",
        "eff/ort/latency_ms_b1", "eff/ort/latency_ms_b8", "teacher/eff/ort/latency_ms_b8", "eff/ort/speedup_b8",
        "eff/ort_int8/latency_ms_b8", "eff/ort_int8/speedup_b8", "eff/ort_int8/max_logit_diff",
        "energy/train_kwh", "energy/co2_kg", "energy/infer_kwh_per_1k", "teacher/energy/infer_kwh_per_1k",
        "fidelity/agreement", "fidelity/prob_loyalty", "fidelity/kl",
        "robust/typo/acc", "robust/typo/success_rate", "teacher/robust/typo/acc", "robust/word/acc",
        "ood/tiny_ood/acc", "ood/tiny_ood/f1", "teacher/ood/tiny_ood/acc",
    ):
        assert key in m, key
    assert json.loads((run_dir / "results.json").read_text())["metrics"] == pytest.approx(m)
    assert results["energy_method"]
    # ONNX Runtime's INT8 graph of the student: int8 weights (the tiny model is mostly its embedding table,
    # which ORT's dynamic quantization leaves fp32, so the file shrinks less than 4x), logits near fp32's
    fp32_graph = sum(f.stat().st_size for f in run_dir.iterdir() if "student.onnx" in f.name)  # + external data
    assert m["eff/ort_int8/onnx_bytes"] < fp32_graph / 2
    assert m["eff/ort_int8/max_logit_diff"] < 0.5


def test_measurements_agree_with_the_models(suite_run):
    m = suite_run[0]["metrics"]
    # 2 of the teacher's 4 layers: half the encoder FLOPs (plus the same pooler and classifier)
    assert 0.45 < m["eff/flops"] / m["teacher/eff/flops"] < 0.56
    assert m["eff/params_nonembedding"] < m["eff/nonzero_params"] <= m["eff/params"]
    assert m["eff/disk_compression"] == pytest.approx(m["teacher/eff/disk_bytes"] / m["eff/disk_bytes"])
    assert m["eff/disk_compression"] > 1.0
    assert m["eff/latency_ms_b1_p90"] >= m["eff/latency_ms_b1"] > 0
    assert m["eff/speedup"] == m["eff/speedup_b8"]  # the largest batch size is the tables' column
    assert m["eff/ort/max_logit_diff"] < 1e-4
    assert m["eff/threads"] == 2
    assert 0 < m["fidelity/prob_loyalty"] <= 1 and m["fidelity/kl"] >= 0
    for who in ("", "teacher/"):
        assert 0 <= m[f"{who}robust/typo/success_rate"] <= 1
        assert m[f"{who}robust/typo/changed"] > 0.9  # every example has words to misspell
    assert m["ood/tiny_ood/examples"] > 0
    assert m["teacher/ood/tiny_ood/acc"] > 0.6  # the cue words carry over
    assert m["energy/train_kwh"] > 0 and m["energy/co2_kg"] > 0


def test_the_summary_prints_the_suite(suite_run):
    text = format_summary(suite_run[0])
    for label in ("GFLOPs / example", "latency ms b1 (p50)", "disk (MB)", "probability loyalty",
                  "typo attack: acc", "OOD tiny_ood: acc", "training energy (kWh)"):
        assert label in text, label
    assert (suite_run[1] / "student.onnx").exists()


def test_an_ood_set_with_other_labels_fails_before_training(tiny_setup):
    root = tiny_setup[0]
    other = root / "other_labels.csv"
    with other.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([[f"text {i}", ["good", "bad"][i % 2]] for i in range(40)])
    with pytest.raises(ConfigError) as err:
        run_tiny(tiny_setup, "ood_bad", "technique=kd", "student=2L", *full_suite(other)[-1:])
    assert "eval.ood" in str(err.value) and "bad" in str(err.value)
    assert not (root / "outputs" / "runs" / "ood_bad" / "checkpoints").exists()


def test_the_teachers_ood_and_attack_figures_are_computed_once(suite_run, tiny_setup, caplog):
    root = tiny_setup[0]
    first = suite_run[0]["metrics"]
    with caplog.at_level("INFO"):
        again = run_tiny(tiny_setup, "suite_again", "technique=finetune", "student=2L",
                         *full_suite(root / "ood.csv"))["metrics"]
    assert any("teacher's OOD and attack metrics from the cache" in r.getMessage() for r in caplog.records)
    teacher_keys = [k for k in first if k.startswith(("teacher/robust/", "teacher/ood/"))]
    assert len(teacher_keys) >= 10
    assert {k: again[k] for k in teacher_keys} == {k: first[k] for k in teacher_keys}
    assert list((root / "outputs" / "cache" / "teacher_eval").glob("*.json"))
