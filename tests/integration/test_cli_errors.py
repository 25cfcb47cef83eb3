"""Bad command lines end in one clear line (no traceback) and exit status 2, before any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLIMNLP_ROOT": str(cwd)}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["technique=tinybertx"], "technique 'tinybertx' is not available; available: "),
        (["student=5L"], "student '5L' is not available; available: 2L, 3L, 4L, 6L"),
        (["technique.alhpa=0.3"], "unknown key 'technique.alhpa'; keys of technique: _target_, alpha, temperature, loss"),
        (["technique.temperature=-1"], "technique.temperature=-1 is invalid: the softmax temperature must be > 0"),
        (["technique.alpha=1.5"], "technique.alpha=1.5 is invalid: the weight of the hard-label loss must lie in [0, 1]"),
        (["data.source.text_column=tweet", "data=local"], "data.source.path is required"),
        (["data.max_length=0"], "data.max_length=0 is invalid"),
        (["optim.lr_scheduler.name=cosinex"], "optim.lr_scheduler.name='cosinex' is invalid: linear, cosine, "),
        (["optim.optimizer.lr=0"], "optim.optimizer.lr=0 is invalid"),
        (["teacher.finetune.lr=-1e-4"], "teacher.finetune.lr=-0.0001 is invalid"),
        (["trainer.precision=99"], "trainer.precision=99 is invalid"),
        (["trainer.accelerator=tpux"], "trainer.accelerator='tpux' is invalid"),
        (["trainer.devices=999"], "trainer.devices=999 is invalid"),
        (["technique=minilm", "+technique.teacher_layer=2"], "technique.teacher_layer=2 is invalid: MiniLM takes: alpha, beta, temperature"),
        (["technique=kd", "schedule=cubic"], "no schedule for technique kd, which ramps nothing"),
        (["technique=meta_kd", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], "technique meta_kd cannot run under DDP"),
        (["-m", "seed=1,2", "technique.temperature=-1"], "technique.temperature=-1 is invalid"),
        (["-m", "technique=kd,pkd", "technique.loss=mse"], "unknown key 'technique.loss'; keys of technique: "),
    ],
    ids=["unknown-technique", "unknown-student", "misspelt-key", "negative-temperature", "alpha-out-of-range",
         "missing-path", "bad-max-length", "scheduler-name", "zero-lr", "teacher-lr", "precision", "accelerator",
         "devices", "parent-class-hparam", "schedule-not-read", "no-ddp", "multirun", "multirun-second-job"],
)
def test_bad_input_is_one_line(args, expected, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr[-2000:]
    assert expected in error_lines[0]
    assert not list(tmp_path.rglob("*.ckpt")), "nothing may train before the error"


def test_unknown_text_column_is_named(tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text("review,label\nnice,pos\nbad,neg\n" * 20)
    result = run_cli("data=local", f"data.source.path={data}", "data.source.text_column=text", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert "text_column" in line and "review" in line  # names the bad key and lists the real columns


def test_empty_dataset_is_refused(tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("text,label\n")
    result = run_cli("data=local", f"data.source.path={data}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "empty" in result.stderr.lower()
