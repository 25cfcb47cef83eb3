"""End-to-end runs of the real runner on a tiny teacher and corpus."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import run_tiny as _run

import slimnlp
from slimnlp.results import checkout_state


def test_kd_run_writes_complete_results(tiny_setup):
    results = _run(tiny_setup, "kd", "technique=kd", "student=2L")
    m = results["metrics"]
    run_dir = tiny_setup[0] / "outputs" / "runs" / "kd"
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["metrics"] == pytest.approx(m)
    assert (on_disk["task"], on_disk["technique"], on_disk["teacher"], on_disk["student"], on_disk["seed"]) == (
        "tiny", "kd", "tiny_bert", "2L", 42,
    )
    for key in ("val/acc", "test/acc", "test/f1", "teacher/test/acc", "eff/params", "teacher/eff/params",
                "eff/latency_ms", "teacher/eff/latency_ms", "eff/speedup", "fidelity/agreement"):
        assert key in m, key
    # The fine-tuned teacher learned the cue words; the 2-layer student learned them from it.
    assert m["teacher/test/acc"] > 0.8
    assert m["test/acc"] > 0.6
    assert 0.0 <= m["fidelity/agreement"] <= 1.0
    # 2 of 4 layers: fewer parameters and fewer FLOPs (measured speed-ups of a 32-wide model are noise on a
    # loaded machine: they are checked in benchmarks/, not here).
    assert m["eff/params"] < m["teacher/eff/params"]
    assert m["eff/flops"] < 0.75 * m["teacher/eff/flops"]
    # Everything a later stage or a report needs is in the run folder.
    for name in ("config.yaml", "split.json", "student/config.json", "student/model.safetensors"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "checkpoints").glob("best*.ckpt"))
    assert on_disk["layer_map"] == [1, 3]
    # which code made it: the checkout's commit, and the run-relevant files that differed from it
    code = checkout_state()
    assert on_disk["env"]["code"] == json.loads((run_dir / "run_info.json").read_text())["code"] == code
    checkout = Path(slimnlp.__file__).resolve().parents[2]
    if (checkout / ".git").exists():  # the tests run from a clone (CI's, a developer's), not an installed wheel
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True)
        assert code["commit"] == head.stdout.strip()


def test_kd_training_loss_decreases(tiny_setup):
    _run(tiny_setup, "kd_loss", "technique=kd", "student=2L")
    log = pd.read_csv(tiny_setup[0] / "outputs" / "runs" / "kd_loss" / "csv" / "metrics.csv")
    losses = log["train/loss"].dropna().to_numpy()
    assert len(losses) >= 6
    assert losses[-3:].mean() < losses[:3].mean() * 0.8


def test_teacher_is_fine_tuned_once_then_reused(tiny_setup, caplog):
    _run(tiny_setup, "ft_a", "technique=finetune", "student=2L")
    caplog.clear()
    with caplog.at_level("INFO"):
        results = _run(tiny_setup, "ft_b", "technique=finetune", "student=2L")
    assert any("reusing the cached fine-tuned" in r.getMessage() for r in caplog.records)
    assert not any("fine-tuning it first" in r.getMessage() for r in caplog.records)
    assert results["artifacts"]["teacher_dir"].startswith(str(tiny_setup[0] / "outputs" / "teachers"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is lent)")
@pytest.mark.parametrize("technique", ["kd", "tinybert"])
def test_gpu_bf16_run(tiny_setup, technique):
    """The GPU path: Lightning on CUDA in bf16-mixed, teacher moved with the student, logit cache on
    device tensors, hooks under autocast; measurement still on the CPU."""
    results = _run(tiny_setup, f"gpu_{technique}", f"technique={technique}", "student=2L", "trainer=gpu")
    m = results["metrics"]
    assert results["config"]["trainer"]["precision"] == "bf16-mixed"
    assert m["teacher/test/acc"] > 0.8
    if technique == "kd":
        assert m["test/acc"] > 0.6
    assert 0.0 <= m["fidelity/agreement"] <= 1.0
    assert m["eff/speedup"] > 1.0


def test_wandb_offline_gets_config_tags_and_summary(tiny_setup):
    _run(tiny_setup, "wandb", "technique=kd", "student=2L", "logger=wandb", "trainer.max_epochs=1", "tags=[smoke]")
    run_dir = tiny_setup[0] / "outputs" / "runs" / "wandb"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "W&B must run offline by default"
    # wandb keeps an offline run in its binary transaction log until `wandb sync`; its protobuf records
    # hold strings verbatim, so the config, tags and final summary can be checked in the bytes.
    # train() returns only once wandb-core has closed the run's stream, so the log is complete: no polling.
    log = next(offline[0].glob("*.wandb")).read_bytes()
    for expected in (b"LogitKD", b"temperature", b"smoke", b"2L", b"fidelity/agreement", b"final/test/acc"):
        assert expected in log, expected
    # the per-run metrics table: a table-file record, and the table's JSON among the run's media files
    assert b"metrics_table" in log
    (table,) = (offline[0] / "files" / "media" / "table").glob("metrics_table_*.table.json")
    rows = {row[1]: row[2] for row in json.loads(table.read_text())["data"]}
    assert rows["eff/flops"] > 0 and "fidelity/prob_loyalty" in rows
