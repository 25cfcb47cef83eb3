"""``pip install .`` (not editable) ships the config tree: ``slimnlp-train technique=kd debug=fast`` runs from
another folder on the real embedded assets, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, **kwargs)


def test_a_built_wheel_runs_from_another_folder(tmp_path):
    source, wheel_dir, site, elsewhere = (tmp_path / n for n in ("source", "wheel", "site", "elsewhere"))
    # Build from a copy: an in-tree build would leave build/ in the checkout.
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                  "-w", str(wheel_dir)])
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(wheel_dir.glob("slimnlp-*.whl"))
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)])
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (site / "slimnlp" / "conf" / "train.yaml").is_file()
    assert (site / "slimnlp" / "conf" / "teacher" / "finetune" / "default.yaml").is_file()
    assert (site / "slimnlp" / "conf" / "hparams_search" / "recipes.yaml").is_file()
    assert (site / "hydra_plugins" / "slimnlp_optuna_sweeper" / "optuna_sweeper.py").is_file()  # -m hparams_search=
    assert not (site / "hydra_plugins" / "__init__.py").exists()  # a namespace package, shared with other plugins

    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    env.pop("SLIMNLP_CONFIG_DIR", None)
    where = _run([sys.executable, "-c", "import slimnlp.config as c; print(c.config_dir())"], env=env, cwd=elsewhere)
    assert where.stdout.strip() == str(site / "slimnlp" / "conf"), where.stderr[-2000:]

    result = _run([str(site / "bin" / "slimnlp-train"), "technique=kd", "debug=fast"], env=env, cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((elsewhere / "outputs" / "runs").glob("*/results.json"))
    assert len(runs) == 1
    metrics = json.loads(runs[0].read_text())["metrics"]
    assert 0 < metrics["train/optimizer_steps"] <= 4  # debug=fast: trainer.max_steps=4 on 64 examples
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["eff/disk_bytes"] > 0
