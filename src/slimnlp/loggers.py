"""Experiment loggers (CSV, TensorBoard, W&B) for one run, always closed: a crashed run's W&B run is marked
failed (exit code 1) instead of being left open, and a successful one gets the final metrics as its summary."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger("slimnlp")


def make_loggers(cfg: DictConfig, tags: list[str]) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        extra = {"tags": [*tags, *node.get("tags", [])]} if "tags" in node else {}
        loggers.append(instantiate(node, **extra))
        log.debug("logger %s enabled", name)
    return loggers


def metrics_table(metrics: dict[str, float]) -> Any:
    """The run's final metrics as a ``wandb.Table`` (group, metric, value): what the dashboard shows per run."""
    import wandb

    rows = [[key.rpartition("/")[0] or "-", key, float(value)] for key, value in sorted(metrics.items())]
    return wandb.Table(columns=["group", "metric", "value"], data=rows)


def finish_loggers(
    loggers: list[Any], metrics: dict[str, float], status: str, warnings: list[str] | None = None
) -> None:
    """Log the final metrics (on success) and close every logger; ``status`` is ``success`` or ``failed``.
    W&B also gets the run's ``warnings`` (models that learned nothing) in its summary, and the metrics as a
    table."""
    for lg in loggers:
        try:
            if status == "success":
                lg.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step=0)
            lg.finalize(status)
            experiment = getattr(lg, "_experiment", None)  # W&B: only a run that was started is finished
            if experiment is not None and hasattr(experiment, "finish"):
                if status == "success":
                    experiment.summary.update({**metrics, "warnings": list(warnings or [])})  # the run summary
                    experiment.log({"metrics_table": metrics_table(metrics)})  # one row per metric, searchable
                experiment.finish(exit_code=0 if status == "success" else 1)
                _wait_for_wandb()
        except Exception:  # closing one logger must not hide the run's own error or skip the others
            log.exception("could not close logger %s", type(lg).__name__)


def _wait_for_wandb() -> None:
    """Block until W&B has written (offline) or uploaded (online) the finished run.

    ``run.finish()`` only tells wandb-core the run is over (``inform_finish`` is fire-and-forget in wandb
    0.31); the run's stream, and with it the offline transaction log, is flushed and closed later in the
    service process, so a caller reading ``run-*.wandb`` or exiting a sweep worker right after ``train``
    could see a header-only log. ``wandb.teardown()`` waits for the service to shut down, which closes every
    stream. Skipped while the caller has another W&B run open (teardown would finish it too); the next run
    starts a new service."""
    import wandb

    if wandb.run is None:
        wandb.teardown()
