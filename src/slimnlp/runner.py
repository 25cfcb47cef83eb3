"""The Lightning part of a run that teacher fine-tuning and every technique share: fit, restore the best
checkpoint, test. Kept apart from ``train.py`` so the teacher cache can run the same loop."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from slimnlp.techniques.base import Technique

log = logging.getLogger(__name__)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint the monitored ModelCheckpoint kept, if any."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.monitor.startswith("val/") and cb.best_model_path:
            return cb.best_model_path
    return None


class ValidationAtBest(Callback):
    """Keeps the ``val/*`` metrics of the best validation (and of the last one), so that restoring the
    best checkpoint needs no second validation pass to report its numbers."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        # strictly better, as ModelCheckpoint keeps the first of equal scores
        if self.monitor in self.last and self.last[self.monitor] > self.best.get(self.monitor, float("-inf")):
            self.best = dict(self.last)


def fit_and_test(
    technique: Technique,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    ckpt_path: str | None = None,
    select_best: bool = True,
    test: bool = True,
) -> dict[str, float]:
    """Train (unless post-training), restore the best validation checkpoint, test it; returns its
    ``val/*`` metrics and, with ``test``, the ``test/*``, ``teacher/*`` and ``fidelity/*`` ones.

    ``test=False`` ends after training: an intermediate stage, or a teacher whose test numbers the
    runs it teaches report anyway.
    """
    validation = ValidationAtBest(f"val/{technique.task.primary_metric}")
    trainer.callbacks.append(validation)
    metrics: dict[str, float] = {}
    if technique.trains:
        trainer.fit(technique, datamodule=datamodule, ckpt_path=ckpt_path)
        best = best_checkpoint(trainer) if select_best else None
        if best:
            log.info("restoring the best validation checkpoint %s", best)
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            technique.load_state_dict(state)
        metrics.update(validation.best if best else validation.last)
    else:
        datamodule.setup("fit")
        technique.compress(datamodule)
        metrics.update(trainer.validate(technique, datamodule=datamodule, verbose=False)[0])
    if test:
        for per_loader in trainer.test(technique, datamodule=datamodule, verbose=False):
            metrics.update({k: float(v) for k, v in per_loader.items()})
    return metrics


def make_trainer(trainer_cfg: Any, callbacks: list[Callback], loggers: list[Any] | bool, **overrides: Any) -> L.Trainer:
    """Instantiate ``lightning.Trainer`` from its config node with run-specific pieces attached."""
    from hydra.utils import instantiate

    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers, **overrides)

