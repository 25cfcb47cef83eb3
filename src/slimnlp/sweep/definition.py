"""A sweep as the config states it: the ``hparams_search`` node (``conf/hparams_search/<name>.yaml``) and the
``-m`` command line, checked in one place so the sweeper and ``train.py``'s pre-flight refuse the same things.

    hparams_search:
      study_name: kd_tune            # the Optuna study; a re-run with the same name and storage resumes it
      storage: null                  # null: sqlite:///<paths.root_dir>/sweeps/<study_name>.db; or any SQLAlchemy
                                     # URL (postgresql+psycopg://user@host/db) that workers on several machines share
      objectives: [val/acc, eff/latency_ms_b32]  # results.json metrics ...
      directions: [maximize, minimize]           # ... and their directions, as Optuna's create_study takes them
      n_trials: 20                   # the study's budget, shared by all workers
      n_jobs: 1                      # trials launched together (hydra/launcher=joblib runs them in parallel)
      sampler: null                  # a _target_ node (optuna.samplers.*); null: TPE, NSGA-II for several objectives
      pruner: null                   # a _target_ node (optuna.pruners.MedianPruner ...); null: no pruning
      heartbeat_s: 60                # running trials beat; one silent for 2x this is failed (its worker died)
      params: {optim.optimizer.lr: "tag(log, interval(1e-5, 1e-3))"}   # slimnlp.sweep.space
      conditional: {}                # parameters searched only when a categorical takes a value

Sweeps on the command line (``technique.alpha=interval(0.1,0.9)``, ``student=2L,4L``) join ``params`` (and
replace an entry of the same key; ``~hparams_search.params`` drops the file's); plain overrides apply to every
trial. Objectives and directions are lists so that the command line replaces them whole
(``hparams_search.objectives=[val/acc] hparams_search.directions=[maximize]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slimnlp.errors import ConfigError
from slimnlp.sweep.space import SearchSpace
from slimnlp.sweep.study import Objectives, default_storage

KEYS = ("study_name", "storage", "objectives", "directions", "n_trials", "n_jobs", "sampler", "pruner", "heartbeat_s", "params",
        "conditional")


@dataclass
class SweepDefinition:
    study_name: str
    storage: str
    objectives: Objectives
    space: SearchSpace | None  # None for a trial's own job
    fixed: list[str]  # the command line's plain overrides, passed to every trial
    n_trials: int
    n_jobs: int = 1
    sampler: Mapping[str, Any] | None = None  # config nodes, instantiated by the sweeper
    pruner: Mapping[str, Any] | None = None
    heartbeat_s: int = 60

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, arguments: Sequence[str] | None, root: str) -> SweepDefinition:
        """``node``: the resolved ``hparams_search`` mapping; ``arguments``: the ``-m`` command line's overrides
        (None in a trial's own job, which needs the study but not the search space); ``root``: ``paths.root_dir``
        (where the default SQLite study lives)."""
        if not node:
            raise ConfigError("hparams_search", None, "a search definition: python train.py -m hparams_search=<name>")
        unknown = sorted(set(node) - set(KEYS))
        if unknown:
            raise ConfigError(f"hparams_search.{unknown[0]}", node[unknown[0]], f"one of the keys {', '.join(KEYS)}")
        fixed, sweeps = split_arguments(arguments) if arguments is not None else ([], {})
        study_name = node.get("study_name")
        if not isinstance(study_name, str) or not study_name or any(c in study_name for c in "/\\ "):
            raise ConfigError("hparams_search.study_name", study_name, "a non-empty name without / \\ or spaces")
        n_trials, n_jobs, heartbeat = node.get("n_trials"), node.get("n_jobs", 1), node.get("heartbeat_s", 60)
        for key, value, low in (("n_trials", n_trials, 1), ("n_jobs", n_jobs, 1), ("heartbeat_s", heartbeat, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"hparams_search.{key}", value, f"an int >= {low}")
        for key in ("sampler", "pruner"):
            value = node.get(key)
            if value is not None and not (isinstance(value, Mapping) and "_target_" in value):
                raise ConfigError(f"hparams_search.{key}", value, f"null or a node with _target_ (optuna.{key}s.*)")
        storage = node.get("storage") or default_storage(root, study_name)
        if not isinstance(storage, str) or "://" not in storage:
            raise ConfigError("hparams_search.storage", storage, "null or a SQLAlchemy URL (sqlite:///f.db, postgresql+psycopg://...)")
        return cls(
            study_name=study_name,
            storage=storage,
            objectives=Objectives.parse(node.get("objectives"), node.get("directions")),
            space=SearchSpace({**dict(node.get("params") or {}), **sweeps}, node.get("conditional") or {})
            if arguments is not None else None,
            fixed=fixed,
            n_trials=n_trials,
            n_jobs=n_jobs,
            sampler=node.get("sampler"),
            pruner=node.get("pruner"),
            heartbeat_s=heartbeat,
        )


def split_arguments(arguments: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line as (plain overrides, ``{key: sweep}``), in Hydra's grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(arguments))
    except OverrideParseException as err:
        raise ConfigError("command line", " ".join(arguments), str(err).splitlines()[0]) from None
    fixed, sweeps = [], {}
    for override in parsed:
        if override.is_sweep_override():
            sweeps[override.get_key_element()] = override.input_line.split("=", 1)[1]
        else:
            fixed.append(override.input_line)
    return fixed, sweeps
