"""``hydra/sweeper=slimnlp_optuna``: the sweeper's own node holds nothing but its target; the search lives in the
run config's ``hparams_search`` node, so ``hparams_search.n_trials=50`` overrides it like any other key."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class SlimnlpOptunaSweeperConf:
    _target_: str = "hydra_plugins.slimnlp_optuna_sweeper.optuna_sweeper.SlimnlpOptunaSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="slimnlp_optuna", node=SlimnlpOptunaSweeperConf,
                             provider="slimnlp")
