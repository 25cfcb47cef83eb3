"""``python train.py pipeline=...``: a distil -> prune -> quantize chain on the tiny setup, each stage a run whose
student the next starts from; a pipeline killed in its second stage resumes there; chains that cannot work fail
in one line before anything trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import tiny_overrides
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "integration"), str(TESTS)])}


def pipeline(tiny_setup, *extra: str) -> subprocess.CompletedProcess:
    root, corpus, teacher = tiny_setup
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "pipeline=distill_prune_quantize",
         *tiny_overrides(root, corpus, teacher), "pipeline.stages.distill='technique=kd student=2L'",
         "trainer.max_epochs=2", *extra],
        env=ENV, capture_output=True, text=True, timeout=900, check=False,
    )


def only_folder(root: Path) -> Path:
    folders = list((root / "outputs" / "pipelines").glob("*_distill_prune_quantize"))
    assert len(folders) == 1, folders
    return folders[0]


def test_a_killed_pipeline_resumes_in_its_second_stage_and_reports_every_stage(tiny_setup, tmp_path):
    root = tiny_setup[0]
    crash = ["+callbacks.crash._target_=helpers.CrashOnce", "+callbacks.crash.step=6",
             "+callbacks.crash.technique=MagnitudePruning", f"+callbacks.crash.marker={tmp_path / 'crashed'}"]
    killed = pipeline(tiny_setup, *crash)
    assert killed.returncode != 0 and "simulated crash in MagnitudePruning" in killed.stderr
    folder = only_folder(root)
    first, second, third = folder / "1_distill", folder / "2_prune", folder / "3_quantize"
    assert (first / "results.json").is_file() and not (second / "results.json").exists() and not third.exists()
    first_written = (first / "results.json").stat().st_mtime_ns
    summary = json.loads((folder / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done", "running", "pending"]

    resumed = pipeline(tiny_setup, *crash, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert only_folder(root) == folder and (first / "results.json").stat().st_mtime_ns == first_written  # not re-run
    assert json.loads((second / "run_info.json").read_text())["resumed_at"]  # stage 2 continued its own run
    results = [json.loads((d / "results.json").read_text()) for d in (first, second, third)]
    assert [r["technique"] for r in results] == ["kd", "magnitude_pruning", "ptq_dynamic"]
    # each stage started from the student the one before saved
    assert results[1]["config"]["student"]["path"] == str(first / "student")
    assert results[2]["config"]["student"]["path"] == str(second / "student")
    sparsity = results[1]["metrics"]["compress/sparsity"]
    assert abs(sparsity - 0.5) <= 0.005  # measured on the pruned student's weights
    assert results[2]["metrics"]["compress/quantized_layers"] > 0
    assert results[2]["metrics"]["eff/disk_bytes"] < results[1]["metrics"]["eff/disk_bytes"]  # INT8 is smaller
    summary = json.loads((folder / "pipeline.json").read_text())
    assert summary["status"] == "finished" and [s["status"] for s in summary["stages"]] == ["done"] * 3
    assert summary["stages"][2]["metrics"]["eff/disk_bytes"] == results[2]["metrics"]["eff/disk_bytes"]
    assert "| 3 quantize | ptq_dynamic |" in resumed.stdout  # the table of every stage's metrics


def test_the_second_stage_starts_from_the_first_stages_weights(tiny_setup):
    root = tiny_setup[0]
    folder = max((root / "outputs" / "pipelines").glob("*_distill_prune_quantize"), default=None)
    if folder is None or not (folder / "2_prune" / "results.json").is_file():
        result = pipeline(tiny_setup)
        assert result.returncode == 0, result.stderr[-4000:]
        folder = only_folder(root)
    stage_one = load_file(folder / "1_distill" / "student" / "model.safetensors")
    pruned = load_file(folder / "2_prune" / "student" / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"  # not pruned (encoder Linears only), trained on in stage 2
    assert stage_one[key].shape == pruned[key].shape
    assert (stage_one[key] - pruned[key]).abs().mean() < 0.1 * stage_one[key].abs().mean()


def test_a_chain_that_cannot_work_fails_in_one_line_before_training(tiny_setup):
    root = tiny_setup[0]
    before = sorted((root / "outputs" / "pipelines").glob("*"))
    result = pipeline(tiny_setup, "~pipeline.stages", "+pipeline.stages={quantize: 'technique=ptq_dynamic', "
                      "prune: 'technique=magnitude_pruning'}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "pipeline.stages.quantize" in errors[0] and "quantize last" in errors[0], result.stderr
    bad_value = pipeline(tiny_setup, "pipeline.stages.prune='technique=magnitude_pruning technique.sparsity=1.5'")
    assert bad_value.returncode == 2 and "technique.sparsity=1.5" in bad_value.stderr.splitlines()[-1]
    assert sorted((root / "outputs" / "pipelines").glob("*")) == before  # no pipeline folder: nothing ran


def test_tinybert_two_stage_runs_general_distillation_then_the_task_stages_from_its_student(tiny_setup):
    """``pipeline=tinybert_two_stage``: TinyBERT's whole recipe in one command. The data differ per stage (unlabelled
    text, then the task), so each stage names its own; everything else is common."""
    root, corpus, teacher = tiny_setup
    common = [o for o in tiny_overrides(root, corpus, teacher) if not o.startswith("data")]
    general = (f"technique=general_distill data=text_corpus data.corpora=[] data.files=[{corpus}] data.max_length=16 "
               "data.batch_size=16 data.val_samples=30 student=tinybert_4L student.num_layers=2 student.hidden_size=16 "
               "student.num_attention_heads=4 student.intermediate_size=32 technique.lr=2e-3 trainer.max_steps=20")
    task = (f"technique=tinybert data=local data.source.path={corpus} data.task_name=tiny data.max_length=16 "
            "data.batch_size=16 data.eval_batch_size=32")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "pipeline=tinybert_two_stage", *common, "trainer.max_epochs=2",
         f"pipeline.stages.general='{general}'", f"pipeline.stages.task='{task}'"],
        env=ENV, capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (folder,) = (root / "outputs" / "pipelines").glob("*_tinybert_two_stage")
    first, second = (json.loads((folder / d / "results.json").read_text()) for d in ("1_general", "2_task"))
    assert (first["technique"], first["task"], second["technique"], second["task"]) == (
        "general_distill", "text_corpus", "tinybert", "tiny")
    assert first["metrics"]["train/optimizer_steps"] == 20 and first["metrics"]["val/loss"] > 0
    assert second["config"]["student"]["path"] == str(folder / "1_general" / "student")
    general_params = first["metrics"]["eff/params"]  # the 2 x 16 encoder, no head
    assert second["metrics"]["eff/params"] == general_params + 16 * 3 + 3  # + a new 3-class head on its pooled output
    assert "test/acc" in second["metrics"]
    summary = json.loads((folder / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done", "done"]
