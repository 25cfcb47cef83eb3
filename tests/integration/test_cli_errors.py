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
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
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
    ],
    ids=["unknown-technique", "unknown-student", "misspelt-key", "negative-temperature", "alpha-out-of-range",
         "missing-path", "bad-max-length"],
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
