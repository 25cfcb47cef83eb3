"""results.json: one file per run, the unit every report, sweep and pipeline stage reads.

The schema is fixed; what grows is ``metrics``, a flat ``{"split/name": number}`` dict, so a new
measurement (FLOPs, energy, robustness …) is a new key and no reader breaks.
"""

from __future__ import annotations

import json
import os
import platform
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
