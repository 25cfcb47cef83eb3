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


def fit_and_test(
    technique: Technique,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    ckpt_path: str | None = None,
    select_best: bool = True,
    test: bool = True,
) -> dict[str, float]:
    """Train (unless post-training), reload the best validation checkpoint, validate and test it.

    ``test=False`` ends after training: an intermediate stage whose student the next stage takes over.
    """
    if technique.trains:
        trainer.fit(technique, datamodule=datamodule, ckpt_path=ckpt_path)
        best = best_checkpoint(trainer) if select_best else None
        if best:
            log.info("restoring the best validation checkpoint %s", best)
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            technique.load_state_dict(state)
    else:
        datamodule.setup("fit")
        technique.compress(datamodule)
    if not test:
        return {}
    # Validation again on the restored weights: val/* then describe the model that is tested.
    results: list[dict[str, Any]] = [*trainer.validate(technique, datamodule=datamodule, verbose=False)]
    results += trainer.test(technique, datamodule=datamodule, verbose=False)
    return {k: float(v) for per_loader in results for k, v in per_loader.items()}


def make_trainer(trainer_cfg: Any, callbacks: list[Callback], loggers: list[Any] | bool, **overrides: Any) -> L.Trainer:
    """Instantiate ``lightning.Trainer`` from its config node with run-specific pieces attached."""
    from hydra.utils import instantiate

    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers, **overrides)

