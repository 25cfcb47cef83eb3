"""results.json: one file per run, the unit every report, sweep and pipeline stage reads.

The schema is fixed; what grows is ``metrics``, a flat ``{"split/name": number}`` dict, so a new
measurement (FLOPs, energy, robustness …) is a new key and no reader breaks.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"  # left in the folder of a multirun job that failed (error and traceback)
# Config keys that say where and how a run was kept, never what it computed: the resume hash
# (``config.VOLATILE_KEYS``) and the report's pooling of seeds (``report.rows.LOCATION_KEYS``) both ignore them.
BOOKKEEPING_KEYS = ("resume", "paths", "hydra", "logger", "tags", "trial")


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


PACKAGE_DIR = Path(__file__).resolve().parent
# What a run computes with: the package (its conf/ included) and the entry point beside it.
CODE_PATHS = ("src", "train.py")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout


def checkout_state(package_dir: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """The git commit the package at ``package_dir`` is checked out at, and the files under ``src/`` and
    ``train.py`` that differ from it (modified, or new and not ignored); None where the package is not a git
    checkout's ``src/<package>`` (an installed wheel) or git is missing."""
    try:
        top = Path(_git(package_dir, "rev-parse", "--show-toplevel").strip())
        if (top / "src" / package_dir.name).resolve() != package_dir.resolve():
            return None  # installed into some other project's repository: that repository's commit says nothing
        commit = _git(top, "rev-parse", "HEAD").strip()
        status = _git(top, "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return None
    modified = sorted(line[3:].split(" -> ")[-1] for line in status.splitlines() if line.strip())
    return {"commit": commit, "modified": modified}


@functools.cache
def code_version() -> dict[str, Any] | None:
    """slimnlp's ``checkout_state`` as this process first saw it (``record_start``, as a run starts): the code it
    imported, even if the checkout moves while it trains. A table filled over several sessions mixes runs of
    several commits; this says which code made each cell, and ``modified`` flags a cell run on uncommitted edits."""
    return checkout_state()


def environment() -> dict[str, Any]:
    import lightning
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "code": code_version(),
    }


def build_results(
    *,
    task: str,
    technique: str,
    teacher: str | None,
    student: str,
    seed: int,
    metrics: dict[str, float],
    run_dir: str | Path,
    artifacts: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "technique": technique,
        "teacher": teacher,
        "student": student,
        "seed": seed,
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
        "run_dir": str(run_dir),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts": artifacts or {},
        **(extra or {}),
        "config": config or {},
        "env": environment(),
    }


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return json.loads((path / RESULTS_FILE if path.is_dir() else path).read_text())
