"""The job side of a sweep trial: Optuna's Lightning pruning callback for the trial this run is.

The sweeper passes the trial's number as the override ``trial=<n>``; the job finds the trial in the study's
storage and reports its first objective (a ``val/*`` metric) after every validation of the last training stage,
where Optuna's pruner may stop it (``optuna.TrialPruned``, which the sweeper records as a pruned trial). Only the
last stage reports: a multi-stage technique's earlier stages validate other things and count epochs from zero
again. Pruning needs one objective (Optuna's pruners do not take several) and a pruner in the search config.
"""

from __future__ import annotations

import optuna
from lightning.pytorch import LightningModule, Trainer
from optuna_integration import PyTorchLightningPruningCallback


class TrialPruning(PyTorchLightningPruningCallback):
    """``PyTorchLightningPruningCallback`` that also ends a DDP run that was pruned: under DDP the callback only
    flags the trial in the storage, and ``check_pruned`` (called at the end of fit here) raises."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_pruned()


def trial_pruning(
    trial_number: int | None,
    study_name: str,
    storage_url: str,
    objectives: list[str],
    pruner: optuna.pruners.BasePruner | None,
) -> TrialPruning | None:
    """The pruning callback of trial ``trial_number`` of the study, or None when this run is no trial, the study
    has no pruner, several objectives, or a first objective that is not validated during training."""
    if trial_number is None or pruner is None or len(objectives) != 1 or not objectives[0].startswith("val/"):
        return None
    storage = optuna.storages.get_storage(storage_url)
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(trial_number))
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    return TrialPruning(optuna.trial.Trial(study, trial_id), monitor=objectives[0])

