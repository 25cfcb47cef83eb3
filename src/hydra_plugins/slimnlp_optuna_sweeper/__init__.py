"""slimnlp's Hydra sweeper: ``python train.py -m hparams_search=<name>`` runs an Optuna study (see
``slimnlp.sweep``). Hydra finds it in the ``hydra_plugins`` namespace package; ``hydra/sweeper=slimnlp_optuna``
selects it (every ``conf/hparams_search`` file does)."""
