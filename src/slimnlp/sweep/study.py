"""The Optuna study behind a sweep: storage, objectives read from ``results.json``, the trial budget shared by
every worker, heartbeats, and how a finished job is told to the study.

Workers on several machines share one study through an RDB URL (PostgreSQL); on one machine the default is a
SQLite file. ``n_trials`` is the study's budget, not a worker's: every worker asks for trials until the study
holds that many (complete, pruned, failed or running), so two workers with ``n_trials=12`` run 12 trials
between them. Trial numbers are handed out by the storage, so a worker that asked for a trial past the budget
in a race with another marks it failed (user attribute ``skipped``) without running it.

A job that raised, returned no results, or returned an objective that is missing or NaN is a failed trial,
the sweep goes on. Running trials send heartbeats; a trial whose worker died (no heartbeat for
``2 x heartbeat_s``) is marked failed by the next worker that asks, so a re-run of the sweep resumes the study
instead of waiting on a dead trial.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from slimnlp.errors import ConfigError

log = logging.getLogger("slimnlp")
# Heartbeats are what optuna's own study.optimize uses for dead workers; the ask-and-tell loop here uses them the
# same way, which optuna flags as experimental / "supposed to be used with Study.optimize" on every trial.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
warnings.filterwarnings("ignore", message=".*(heartbeat_interval|fail_stale_trials).*",
                        category=optuna.exceptions.ExperimentalWarning)
DIRECTIONS = ("maximize", "minimize")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


@dataclass(frozen=True)
class Objectives:
    """Metric names of ``results.json`` and their directions, in order (the first one is what pruning watches)."""

    names: tuple[str, ...]
    directions: tuple[str, ...]

    @classmethod
    def parse(cls, names: Sequence[str] | None, directions: Sequence[str] | None) -> Objectives:
        """``objectives`` and ``directions`` as the config lists them (two lists, as Optuna's ``directions``)."""
        names, directions = list(names or []), list(directions or [])
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError("hparams_search.objectives", names, "a list of results.json metrics, e.g. [val/acc]")
        if len(directions) != len(names):
            raise ConfigError("hparams_search.directions", directions,
                              f"one of {'/'.join(DIRECTIONS)} per objective ({len(names)}: {', '.join(names)})")
        for direction in directions:
            if direction not in DIRECTIONS:
                raise ConfigError("hparams_search.directions", direction, " or ".join(DIRECTIONS))
        return cls(tuple(names), tuple(directions))

    def values(self, metrics: Mapping[str, Any]) -> list[float] | str:
        """The objective values of a run's metrics, or why there are none (a missing or non-finite value)."""
        values = []
        for name in self.names:
            value = metrics.get(name)
            if value is None:
                return f"{name} is not in the run's results (its metrics: {', '.join(sorted(metrics)[:12])} ...)"
            value = float(value)
            if not math.isfinite(value):
                return f"{name} is {value}"
            values.append(value)
        return values


def default_storage(root: Path | str, study_name: str) -> str:
    """The SQLite file a study lives in when no storage URL is given: ``<root>/sweeps/<study>.db``."""
    path = Path(root) / "sweeps" / f"{study_name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(
    study_name: str,
    storage_url: str,
    objectives: Objectives,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    heartbeat_s: int | None = 60,
) -> optuna.Study:
    """Create the study or load it (same name and storage: a re-run resumes); its directions must match."""
    storage = _storage(storage_url, heartbeat_s)
    if sampler is None:  # TPE for one objective; NSGA-II for several (TPE's multi-objective mode is slower)
        sampler = optuna.samplers.TPESampler() if len(objectives.names) == 1 else optuna.samplers.NSGAIISampler()
    study = optuna.create_study(
        study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
        directions=list(objectives.directions), load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != list(objectives.directions):
        raise ConfigError("hparams_search.directions", list(objectives.directions),
                          f"the directions study {study_name!r} was created with: {stored} (or a new study_name)")
    names = study.user_attrs.get("objectives")
    if names is None:
        study.set_user_attr("objectives", list(objectives.names))
    elif list(names) != list(objectives.names):
        raise ConfigError("hparams_search.objectives", list(objectives.names),
                          f"the objectives study {study_name!r} was created with: {names} (or a new study_name)")
    return study


def _storage(url: str, heartbeat_s: int | None, attempts: int = 5) -> RDBStorage:
    """Optuna's RDB storage at ``url``. Workers started together on a new database race to create its tables
    (PostgreSQL: a unique violation on the type catalogue): the loser retries once the tables exist."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return RDBStorage(url, heartbeat_interval=heartbeat_s or None,
                              grace_period=2 * heartbeat_s if heartbeat_s else None,
                              engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's URL and driver errors are several lines
            raise ConfigError("hparams_search.storage", url,
                              f"a reachable SQLAlchemy URL ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    raise AssertionError("unreachable")


def trials_to_ask(study: optuna.Study, n_trials: int, batch: int) -> int:
    """How many trials this worker may ask for now: the study's remaining budget, at most ``batch``. Trials
    of dead workers are failed first, so they stop holding budget."""
    optuna.storages.fail_stale_trials(study)
    started = len(study.get_trials(deepcopy=False, states=COUNTED))
    return max(0, min(batch, n_trials - started))


class Heartbeat:
    """Records a heartbeat for the given trials every ``interval`` seconds while their jobs run."""

    def __init__(self, study: optuna.Study, trial_ids: Iterable[int], interval: int | None) -> None:
        self.storage = study._storage
        self.trial_ids, self.interval = list(trial_ids), interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:  # noqa: PYI034 - typing.Self needs Python 3.11
        if self.interval and hasattr(self.storage, "record_heartbeat"):
            self._beat()
            self._thread = threading.Thread(target=self._run, daemon=True, name="optuna-heartbeat")
            self._thread.start()
        return self

    def _beat(self) -> None:
        for trial_id in self.trial_ids:
            self.storage.record_heartbeat(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # a lost beat is retried next interval; it must not kill the sweep
                log.warning("optuna heartbeat failed", exc_info=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class JobOutcome:
    """What a worker learned from one trial's job: its results (``None`` when it failed), the exception it raised,
    and its run folder."""

    results: Mapping[str, Any] | None
    error: BaseException | None
    run_dir: str | None


def tell(study: optuna.Study, trial: optuna.Trial, objectives: Objectives, outcome: JobOutcome,
         overrides: Sequence[str]) -> TrialState:
    """Record a finished job in the study: values, pruned or failed (with the reason as user attribute ``failure``);
    the run folder, its ``results.json`` and the trial's overrides as user attributes."""
    trial.set_user_attr("overrides", list(overrides))
    if outcome.run_dir:
        trial.set_user_attr("run_dir", outcome.run_dir)
        results_file = Path(outcome.run_dir) / "results.json"
        if results_file.is_file():
            trial.set_user_attr("results", str(results_file))
    if isinstance(outcome.error, optuna.TrialPruned):
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if outcome.error is not None or not outcome.results:
        reason = f"{type(outcome.error).__name__}: {outcome.error}" if outcome.error else "the job failed"
        return _fail(study, trial, reason[:2000])
    values = objectives.values(outcome.results.get("metrics", {}))
    if isinstance(values, str):
        return _fail(study, trial, values)
    study.tell(trial, values if len(values) > 1 else values[0])
    return TrialState.COMPLETE


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> TrialState:
    log.warning("trial %d failed: %s", trial.number, reason)
    trial.set_user_attr("failure", reason)
    study.tell(trial, state=TrialState.FAIL)
    return TrialState.FAIL
