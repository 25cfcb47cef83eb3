"""Optuna sweeps driven by slimnlp's Hydra sweeper (``hydra_plugins.slimnlp_optuna_sweeper``): the search space
(``space``), the study and its bookkeeping (``study``), the trial's pruning callback (``pruning``) and the study's
tables (``tables``)."""
