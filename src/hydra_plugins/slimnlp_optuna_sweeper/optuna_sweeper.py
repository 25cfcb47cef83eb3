"""The sweeper: asks the Optuna study for trials, launches them through Hydra's configured launcher (the basic
one runs them in this process one by one; ``hydra/launcher=joblib`` in parallel processes; submitit on a SLURM
cluster), and tells the study what each job returned. Hydra's ``-m`` habit, launchers and sweep folders are
unchanged: every trial is a job in ``hydra.sweep.dir``, in the subfolder named by its trial number.

Everything that is not Hydra plumbing lives in ``slimnlp.sweep``: the definition and its checks, the search
space, the study's budget, heartbeats and bookkeeping, the tables written at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from slimnlp.results import FAILED_FILE
from slimnlp.sweep.definition import SweepDefinition
from slimnlp.sweep.study import Heartbeat, JobOutcome, open_study, tell, trials_to_ask
from slimnlp.sweep.tables import write_study_tables

log = logging.getLogger("slimnlp")


class SlimnlpOptunaSweeper(Sweeper):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> optuna.Study:
        assert self.config is not None
        definition = definition_of(self.config, arguments)
        study = open_study(
            definition.study_name, definition.storage, definition.objectives,
            sampler=instantiate(definition.sampler) if definition.sampler else None,
            pruner=instantiate(definition.pruner) if definition.pruner else None,
            heartbeat_s=definition.heartbeat_s,
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("study %s in %s: %s, %d trials in all", definition.study_name, definition.storage,
                 ", ".join(f"{n} ({d})" for n, d in zip(definition.objectives.names, definition.objectives.directions)),
                 definition.n_trials)
        extra = study_group(self.config.get("logger"), definition.study_name)
        # As inside study.optimize, so a sampler may end the study (GridSampler stops once its grid is done).
        study._stop_flag, study._thread_local.in_optimize_loop = False, True
        try:
            while not study._stop_flag and (count := trials_to_ask(study, definition.n_trials, definition.n_jobs)):
                trials = []
                for _ in range(count):
                    trial = study.ask()
                    if trial.number >= definition.n_trials:  # another worker took the last ones meanwhile
                        trial.set_user_attr("skipped", "over the study's n_trials: another worker asked first")
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    else:
                        trials.append(trial)
                if not trials:
                    break
                self._run_batch(study, definition, trials, extra)
        finally:
            study._thread_local.in_optimize_loop = False
        write_study_tables(study, definition.objectives, sweep_dir)
        return study

    def _run_batch(self, study: optuna.Study, definition: SweepDefinition, trials: list[optuna.Trial],
                   extra: list[str]) -> None:
        """Launch the trials that compose (the others fail with the composition error) and tell the study."""
        launchable, space = [], definition.space
        assert space is not None
        for trial in trials:
            overrides = [*definition.fixed, *space.overrides(space.sample(trial)),
                         f"trial={trial.number}", *extra]
            try:
                self.validate_batch_is_legal([overrides])
            except Exception as err:  # noqa: BLE001 - a combination that cannot compose is a failed trial, not a failed sweep
                tell(study, trial, definition.objectives, JobOutcome(None, err, None), overrides)
                continue
            launchable.append((trial, overrides))
        for run in consecutive_runs(launchable):  # job numbers = trial numbers: each trial's own sweep subfolder
            self._launch(study, definition, run)

    def _launch(self, study: optuna.Study, definition: SweepDefinition, run: list[tuple[optuna.Trial, list[str]]]) -> None:
        ids = [trial._trial_id for trial, _ in run]
        try:
            with Heartbeat(study, ids, definition.heartbeat_s):
                returns = self.launcher.launch([overrides for _, overrides in run], initial_job_idx=run[0][0].number)
        except BaseException as err:  # Ctrl-C or a launcher failure: the trials must not stay running
            for trial, overrides in run:
                tell(study, trial, definition.objectives, JobOutcome(None, err, None), overrides)
            raise
        for (trial, overrides), ret in zip(run, returns):
            state = tell(study, trial, definition.objectives, outcome_of(ret), overrides)
            log.info("trial %d: %s", trial.number, state.name.lower())


def consecutive_runs(trials: list[tuple[optuna.Trial, list[str]]]) -> list[list[tuple[optuna.Trial, list[str]]]]:
    """The batch split where trial numbers jump (another worker asked in between): Hydra numbers a launch's jobs
    from ``initial_job_idx`` on, and the sweep subfolder is named by that number."""
    runs: list[list[tuple[optuna.Trial, list[str]]]] = []
    for item in trials:
        if runs and item[0].number == runs[-1][-1][0].number + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def study_group(loggers: Any, study_name: str) -> list[str]:
    """With a W&B logger, every trial's run goes to the W&B group named after the study."""
    return [f"logger.wandb.group={study_name}"] if "wandb" in (loggers or {}) else []


def definition_of(config: DictConfig, arguments: list[str]) -> SweepDefinition:
    """The resolved ``hparams_search`` node and the command line as a checked SweepDefinition."""
    node = OmegaConf.to_container(config.hparams_search, resolve=True) if config.get("hparams_search") else None
    return SweepDefinition.from_config(node, arguments, root=str(config.paths.root_dir))


def outcome_of(ret: Any) -> JobOutcome:
    """A Hydra JobReturn as a JobOutcome: the job's results (train.py returns them), or what it raised."""
    try:
        results, error = ret.return_value, None
    except Exception as err:  # noqa: BLE001 - JobReturn re-raises the job's exception (optuna.TrialPruned for a pruned trial)
        results, error = None, err
    results = results if isinstance(results, dict) and results else None
    run_dir = (results or {}).get("run_dir")
    if run_dir is None and getattr(ret, "hydra_cfg", None) is not None:
        run_dir = ret.hydra_cfg.hydra.runtime.output_dir
    failed = Path(str(run_dir)) / FAILED_FILE if run_dir else None
    if results is None and error is None and failed is not None and failed.is_file():  # train.py caught it
        error = RuntimeError(json.loads(failed.read_text()).get("error", "the job failed"))
    return JobOutcome(results, error, str(run_dir) if run_dir else None)
