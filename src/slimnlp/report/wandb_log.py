"""Log a finished report to one W&B run: the table as ``wandb.Table`` (display strings and raw numbers) and
each plot as ``wandb.Image``. Offline unless ``WANDB_MODE`` says otherwise, so a report never needs a login
or a network; ``wandb sync`` uploads it later."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from slimnlp.report.errors import ReportError


def log_report(
    display: pd.DataFrame,
    numbers: pd.DataFrame,
    plots: Sequence[Path],
    project: str,
    out_dir: Path,
    config: dict[str, Any],
) -> Path:
    """Log to a new W&B run in ``project``; returns the run's local folder. W&B files go under
    ``$WANDB_DIR`` if set, else under ``out_dir``."""
    try:
        import wandb
    except ImportError:
        raise ReportError("--wandb needs the wandb package (pip install wandb)") from None
    mode = os.environ.get("WANDB_MODE") or "offline"
    directory = None if os.environ.get("WANDB_DIR") else str(out_dir)
    try:
        run = wandb.init(project=project, mode=mode, dir=directory, job_type="report", config=config)
        run.log(
            {
                "report/table": wandb.Table(dataframe=display.astype(str)),
                "report/numbers": wandb.Table(dataframe=numbers),
                **{f"report/{p.stem}": wandb.Image(str(p), caption=p.stem) for p in plots},
            }
        )
        run.summary["report/rows"] = len(display)
        run.summary["report/plots"] = [p.name for p in plots]
        folder = Path(run.dir).parent
        run.finish()
    except Exception as err:  # noqa: BLE001 -- the files are written; say why W&B did not take them, in one line
        raise ReportError(f"--wandb: logging to W&B failed ({type(err).__name__}: {err})") from None
    return folder
