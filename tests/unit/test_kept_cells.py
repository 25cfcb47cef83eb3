"""The cell driver of the experiment tables continues a killed cell only when it ran the same config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slimnlp.config import compose_config, config_hash
from slimnlp.resume import RUN_INFO_FILE

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from kept_cells import resumable

OVERRIDES = ["technique=kd", "student=2L", "seed=1"]


def _killed_run(folder: Path, chash: str) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (folder / RUN_INFO_FILE).write_text(json.dumps({"config_hash": chash}))
    return folder


def test_a_killed_cell_of_the_same_config_resumes_in_place(tmp_path):
    run_dir = _killed_run(tmp_path / "kd_2L_s1", config_hash(compose_config(OVERRIDES)))
    assert resumable(run_dir, OVERRIDES)
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


def test_a_killed_cell_of_another_config_is_set_aside_not_resumed(tmp_path):
    other = config_hash(compose_config([*OVERRIDES[:-1], "seed=2"]))
    run_dir = _killed_run(tmp_path / "kd_2L_s1", other)
    assert not resumable(run_dir, OVERRIDES)
    assert not run_dir.exists()
    (stale,) = tmp_path.glob("kd_2L_s1.stale-*")
    assert (stale / "checkpoints" / "last.ckpt").read_bytes() == b"weights"  # kept, never deleted


def test_a_folder_without_progress_starts_afresh(tmp_path):
    assert not resumable(tmp_path / "never_started", OVERRIDES)
