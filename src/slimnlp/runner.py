"""The Lightning part of a run that teacher fine-tuning and every technique share: fit (or, for a post-training
technique, compress on calibration batches), restore the best checkpoint; test. Kept apart from the runner's
steps so the teacher cache runs the same loop."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

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
    best checkpoint needs no second validation pass to report its numbers. ``mode``: ``max`` (accuracy …) or
    ``min`` (a held-out loss)."""

    def __init__(self, monitor: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    # Checkpointed, so a run resumed after its last validation still reports that validation's metrics.
    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "last": dict(self.last)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.last = dict(state_dict["best"]), dict(state_dict["last"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        # strictly better, as ModelCheckpoint keeps the first of equal scores
        if self.monitor not in self.last:
            return
        sign = 1.0 if self.mode == "max" else -1.0
        if sign * self.last[self.monitor] > sign * self.best.get(self.monitor, sign * float("-inf")):
            self.best = dict(self.last)


class ValidateAtStepBudget(Callback):
    """Validates after the last step of a step budget (``trainer.max_steps``) that ends inside an epoch: Lightning
    validates at epoch ends, so such a run would otherwise end with no validation of its final weights (and a
    stage shorter than an epoch with none at all). Asking the loop to stop makes it validate first."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class Selection(NamedTuple):
    metrics: dict[str, float]  # the selected weights' ``val/*`` (and a post-training technique's ``compress/*``)
    restored: str | None  # the checkpoint those weights were restored from; None: the weights training ended with


def fit_and_select(
    technique: Technique,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    ckpt_path: str | None = None,
    select_best: bool = True,
    calibration: DataLoader | None = None,
) -> Selection:
    """Train and restore the best validation checkpoint (``select_best``; otherwise keep the final weights);
    returns the selected weights' ``val/*`` metrics and the checkpoint they came from.

    A post-training technique (``needs.trains`` False) is instead moved to the Trainer's device,
    ``compress``-ed on the ``calibration`` batches and validated (its ``compress/*`` metrics included).
    Testing is separate (``test_metrics``): the runner tests the exported artifact, not this module.
    """
    validation = ValidationAtBest(f"val/{technique.task.primary_metric}", technique.task.primary_mode)
    trainer.callbacks.extend([validation, ValidateAtStepBudget()])
    metrics: dict[str, float] = {}
    best = None
    if technique.needs.trains:
        trainer.fit(technique, datamodule=datamodule, ckpt_path=ckpt_path)
        best = best_checkpoint(trainer) if select_best else None
        if best:
            log.info("restoring the best validation checkpoint %s", best)
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            technique.load_state_dict(state)
        metrics.update(validation.best if best else validation.last)
    else:
        if calibration is None:
            raise ValueError(f"{type(technique).__name__} compresses after training: it needs calibration batches")
        technique.prepare()
        technique.to(trainer.strategy.root_device)
        metrics.update(technique.compress(OnDevice(calibration, trainer.strategy.root_device)) or {})
        metrics.update(trainer.validate(technique, datamodule=datamodule, verbose=False)[0])
    return Selection(metrics, best)


def test_metrics(technique: Technique, datamodule: L.LightningDataModule, trainer: L.Trainer) -> dict[str, float]:
    """``test/*`` (every test split), ``teacher/test/*`` and ``fidelity/*`` of the technique's student."""
    metrics: dict[str, float] = {}
    for per_loader in trainer.test(technique, datamodule=datamodule, verbose=False):
        metrics.update({k: float(v) for k, v in per_loader.items()})
    return metrics


class OnDevice:
    """A loader whose batches arrive on ``device`` (re-iterable: a technique may calibrate in several passes)."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in self.loader:
            yield {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def make_trainer(trainer_cfg: Any, callbacks: list[Callback], loggers: list[Any] | bool, **overrides: Any) -> L.Trainer:
    """Instantiate ``lightning.Trainer`` from its config node (or plain dict) with run-specific pieces attached."""
    from hydra.utils import instantiate

    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers, **overrides)

