"""``python -m slimnlp.report`` as a user runs it, on results.json files written by hand (no training)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

TEACHER_DIR = "/x/outputs/teachers/minilm_l6/tweets/seed42-abc123"


def write_run(
    folder: Path, technique: str, student: str, seed: int, metrics: dict, task: str = "tweets"
) -> None:
    folder.mkdir(parents=True)
    results = {
        "schema_version": 1,
        "task": task,
        "technique": technique,
        "teacher": "minilm_l6",
        "student": student,
        "seed": seed,
        "metrics": metrics,
        "run_dir": str(folder),
        "finished_at": "2025-01-01T00:00:00+00:00",
        "artifacts": {"teacher_dir": TEACHER_DIR},
        "config": {
            "seed": seed,
            "data": {"task_name": task, "primary_metric": "acc"},
            "teacher": {"name": "minilm_l6"},
            "student": {"name": student, "num_layers": int(student[0])},
            "technique": {"_target_": f"slimnlp.techniques.{technique}"},
            "paths": {"output_dir": str(folder)},
            "trainer": {"default_root_dir": str(folder)},
        },
        "env": {"processor": "x86_64"},
    }
    (folder / "results.json").write_text(json.dumps(results))


def sweep(root: Path) -> Path:
    """A multirun: finetune and kd students at 2 and 4 layers, 3 seeds each; one corrupt job, one failed."""
    job = 0
    accs = {
        ("finetune", "2L"): [0.70, 0.71, 0.72],
        ("finetune", "4L"): [0.78, 0.79, 0.80],
        ("kd", "2L"): [0.73, 0.74, 0.75],
        ("kd", "4L"): [0.80, 0.82, 0.87],
    }
    base = root / "multirun" / "2025-01-01" / "12-00-00"
    for (technique, student), values in accs.items():
        layers = int(student[0])
        for seed, acc in enumerate(values):
            metrics = {
                "test/acc": acc,
                "test/f1": acc - 0.02,
                "eff/params": (10 + 2 * layers) * 1e6,
                "eff/flops": layers * 0.5e9,
                "eff/disk_bytes": (40 + 8 * layers) * 1e6,
                "eff/latency_ms_b1": 1.0 + layers + 0.01 * seed,
                "eff/latency_ms_b32": 5.0 + 6 * layers + 0.1 * seed,
                "eff/speedup_b32": 53.0 / (5.0 + 6 * layers),
                "fidelity/agreement": 0.8 + 0.02 * layers,
                "teacher/test/acc": 0.90,
                "teacher/test/f1": 0.88,
                "teacher/eff/params": 22.7e6,
                "teacher/eff/flops": 3e9,
                "teacher/eff/disk_bytes": 90e6,
                "teacher/eff/latency_ms_b1": 7.0,
                "teacher/eff/latency_ms_b32": 53.0,
            }
            write_run(base / f"{job}_{technique}_{student}_s{seed}", technique, student, seed, metrics)
            job += 1
    (base / f"{job}_broken").mkdir()
    (base / f"{job}_broken" / "results.json").write_text('{"task": "tweets", "metrics": {"test/acc": 0.')
    (base / f"{job + 1}_failed").mkdir()
    (base / f"{job + 1}_failed" / "failed.json").write_text('{"error": "boom"}')
    return root / "multirun"


def report(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimnlp.report", *args],
        cwd=cwd,
        env={**os.environ, "MPLBACKEND": "Agg", **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_report_of_a_multirun(tmp_path):
    runs = sweep(tmp_path)
    ref = tmp_path / "paper.yaml"
    ref.write_text(
        "paper: Test et al. 2000\ntask: tweets\nrows:\n"
        "  - label: Their 4L\n    source: Table 1\n    metrics: {test/acc: 0.81, eff/params: 18.0e6}\n"
    )
    out = tmp_path / "out"
    done = report(
        str(runs),
        "--baseline",
        "technique=finetune,student=4L",
        "--elue-baseline",
        "technique=finetune",
        "--reference",
        str(ref),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    broken = runs / "2025-01-01" / "12-00-00" / "12_broken" / "results.json"
    assert f"warning: skipped {broken.resolve()}: invalid JSON" in done.stderr
    for name in (
        "report.md",
        "report.csv",
        "acc_vs_latency_b1.png",
        "acc_vs_latency_b32.png",
        "acc_vs_bytes.png",
    ):
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = {r["label"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert set(rows) == {
        "teacher (minilm_l6)",
        "finetune · 2L",
        "finetune · 4L",
        "kd · 2L",
        "kd · 4L",
        "Their 4L (paper)",
    }
    kd4 = rows["kd · 4L"]
    assert float(kd4["test/acc/mean"]) == pytest.approx(0.83)
    assert float(kd4["test/acc/std"]) == pytest.approx(math.sqrt(0.0013))  # by hand: (9+1+16)e-4 / 2
    assert kd4["test/acc/n"] == "3" and float(kd4["eff/params/mean"]) == 18e6  # raw units in the CSV
    assert kd4["delta/vs"] == "finetune · 4L" and float(kd4["delta/diff"]) == pytest.approx(0.04)
    assert kd4["delta/verdict"] == "n.s."  # 0.83 vs 0.79 with these spreads: the interval holds 0
    assert rows["kd · 2L"]["delta/verdict"] == "loss"  # 0.74 vs 0.79
    assert rows["finetune · 4L"]["delta/vs"] == "(baseline)"
    # ELUE: the finetune curve through (1 GFLOPs, 0.71) and (2 GFLOPs, 0.79); kd · 2L sits at 1 GFLOPs
    assert float(rows["kd · 2L"]["elue_score"]) == pytest.approx(0.74 - 0.71)
    assert float(rows["kd · 4L"]["elue_score"]) == pytest.approx(0.83 - 0.79)
    assert rows["teacher (minilm_l6)"]["elue_score"] == ""  # 3 GFLOPs: outside the curve
    assert float(rows["teacher (minilm_l6)"]["test/acc/mean"]) == pytest.approx(0.90)

    text = (out / "report.md").read_text()
    assert "| ★ teacher (minilm_l6) | 12 | 0.9000 |" in text
    assert "| kd · 4L | 3 | 0.8300 ± 0.0361 | 0.8100 ± 0.0361 | 18.00 | 2.000 | 72.00 |" in text
    assert "| Their 4L (paper) | paper | 0.8100 |" in text
    assert "1 failed job(s)" in text and "![acc_vs_bytes](acc_vs_bytes.png)" in text
    assert "Units: eff/params in M; eff/flops in GFLOPs; eff/disk_bytes in MB" in text


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_no_results_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(report(str(tmp_path / "empty"), "--out", str(tmp_path / "out"), cwd=tmp_path))
    assert line == f"error: no results.json under {tmp_path / 'empty'}"
    assert not (tmp_path / "out").exists()


def test_unknown_column_is_one_line_error(tmp_path):
    runs = sweep(tmp_path)
    done = report(
        str(runs), "--columns", "test/acc,eff/latency_ms_b64", "--out", str(tmp_path / "o"), cwd=tmp_path
    )
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]  # the skipped-file warning comes first
    assert line.startswith("error: --columns eff/latency_ms_b64: no run has this metric; available: ")
    assert "eff/latency_ms_b32" in line and "Traceback" not in done.stderr


def test_several_tasks_without_task_in_group_by_is_one_line_error(tmp_path):
    write_run(tmp_path / "a", "kd", "4L", 0, {"test/acc": 0.8})
    write_run(tmp_path / "b", "kd", "4L", 0, {"test/acc": 0.6}, task="bbc_news")
    line = one_line_error(
        report(str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    )
    assert line.startswith(
        "error: the runs cover 2 tasks (bbc_news, tweets): one table needs task in --group-by"
    )
    ok = report(
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--group-by",
        "task,technique",
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "acc_vs_latency_b1.png").exists() is False  # no latency in these runs
    assert (
        "acc_vs_latency_b1_tweets.png (no row of tweets has both"
        in (tmp_path / "o" / "report.md").read_text()
    )


def test_bad_flag_is_one_line_error(tmp_path):
    write_run(tmp_path / "a", "kd", "4L", 0, {"test/acc": 0.8})
    line = one_line_error(report(str(tmp_path / "a"), "--baseline", "finetune", cwd=tmp_path))
    assert line == "error: --baseline 'finetune': expected KEY=VALUE[,KEY=VALUE] (e.g. technique=finetune)"
    line = one_line_error(report(str(tmp_path / "a"), "--no-such-flag", cwd=tmp_path))
    assert line.startswith("error: unrecognized arguments: --no-such-flag")


def test_wandb_offline_run_holds_the_table_and_plots(tmp_path):
    runs = sweep(tmp_path)
    done = report(
        str(runs),
        "--wandb",
        "--wandb-project",
        "slimnlp-test",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true"},
    )
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media"
    tables = sorted(p.name for p in (media / "table" / "report").glob("*.table.json"))
    assert [t.split("_")[0] for t in tables] == ["numbers", "table"]
    table = json.loads(next((media / "table" / "report").glob("table_*.table.json")).read_text())
    assert ["★ teacher (minilm_l6)", "12"] == table["data"][0][:2]
    images = sorted(p.name.rsplit("_", 2)[0] for p in (media / "images" / "report").glob("*.png"))
    assert images == ["acc_vs_bytes", "acc_vs_flops", "acc_vs_latency_b1", "acc_vs_latency_b32"]
