"""The sweep's plain parts: Hydra's sweep grammar as Optuna distributions, conditional parameters, overrides that
parse back to the sampled values, objectives read from results, the shared trial budget, heartbeats that fail a
dead worker's trial, and the study's CSV tables."""

from __future__ import annotations

import csv
import math
import time

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from slimnlp.errors import ConfigError
from slimnlp.report.study import plot_study
from slimnlp.sweep.definition import SweepDefinition, split_arguments
from slimnlp.sweep.space import SearchSpace, override, parse_param
from slimnlp.sweep.study import Heartbeat, JobOutcome, Objectives, open_study, tell, trials_to_ask
from slimnlp.sweep.tables import PARETO_CSV, TRIALS_CSV, write_study_tables

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("choice(kd, tinybert)", CategoricalDistribution(("kd", "tinybert"))),
        ("2L,4L", CategoricalDistribution(("2L", "4L"))),
        ([8, 4], CategoricalDistribution((8, 4))),
        ("range(1, 7, 2)", IntDistribution(1, 5, step=2)),
        ("range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("interval(0.1, 0.9)", FloatDistribution(0.1, 0.9)),
        ("tag(log, interval(1e-5, 1e-3))", FloatDistribution(1e-5, 1e-3, log=True)),
        ("tag(int, interval(1, 8))", IntDistribution(1, 8)),
        ("tag(log, int, interval(2, 64))", IntDistribution(2, 64, log=True)),
    ],
)
def test_hydra_sweeps_become_optuna_distributions(spec, expected):
    param = parse_param("k", spec)
    assert param.distribution == expected


def test_a_plain_value_is_fixed_for_every_trial():
    param = parse_param("student", "6L")
    assert param.distribution is None and param.fixed == "6L" and param.bounds() == ["6L"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("interval(5, 1)", "low < high"),
        ("tag(log, interval(0, 1))", "log interval with low > 0"),
        ("tag(int, interval(0.5, 3))", "integer bounds"),
        ("tag(cube, interval(1, 2))", "tags log and int only"),
        ("range(5, 1)", "start < stop"),
        ("choice(a, a)", "none repeated"),
        ("interval(1,", "override grammar"),
        ("choice([1, 2], [3])", "scalars only"),
    ],
)
def test_a_bad_sweep_is_refused_in_one_line_naming_the_key(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_param("technique.alpha", spec)
    assert "\n" not in str(err.value) and "hparams_search.params.technique.alpha" in str(err.value)


SPACE = {
    "params": {"technique": "choice(kd, magnitude_pruning)", "optim.optimizer.lr": "tag(log, interval(1e-5, 1e-3))"},
    "conditional": {"technique": {
        "kd": {"student": "choice(2L, 4L)", "technique.temperature": "interval(1, 8)"},
        "magnitude_pruning": {"student": "6L", "technique.sparsity": "interval(0.5, 0.95)"},
    }},
}


def test_conditional_parameters_are_sampled_only_in_their_branch():
    space = SearchSpace(SPACE["params"], SPACE["conditional"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.sample(trial)
        seen.add(values["technique"])
        if values["technique"] == "kd":
            assert set(values) == {"technique", "student", "technique.temperature", "optim.optimizer.lr"}
            assert values["student"] in ("2L", "4L") and 1 <= values["technique.temperature"] <= 8
            assert "technique=kd/student" in trial.params  # a branch's own Optuna name
        else:
            assert set(values) == {"technique", "student", "technique.sparsity", "optim.optimizer.lr"}
            assert values["student"] == "6L" and 0.5 <= values["technique.sparsity"] <= 0.95
        study.tell(trial, 0.0)
    assert seen == {"kd", "magnitude_pruning"}


def test_every_branch_is_listed_at_both_ends_for_pre_flight():
    configurations = list(SearchSpace(SPACE["params"], SPACE["conditional"]).configurations())
    kd = [c for c in configurations if c["technique"] == "kd"]
    assert len(configurations) == 6 and len(kd) == 4  # (2 students + 1 pruning branch) x (low, high)
    assert {c["technique.temperature"] for c in kd} == {1.0, 8.0}
    assert {c["optim.optimizer.lr"] for c in configurations} == {1e-5, 1e-3}


@pytest.mark.parametrize(
    ("conditional", "message"),
    [
        ({"optim.optimizer.lr": {"x": {"student": "4L"}}}, "a key searched with choice"),
        ({"technique": {"qat": {"technique.bits": "4,8"}}}, "one of technique's choices: kd, magnitude_pruning"),
        ({"technique": ["kd"]}, "a mapping from each value"),
    ],
)
def test_a_bad_condition_is_refused_in_one_line(conditional, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace(SPACE["params"], conditional)


@pytest.mark.parametrize("value", ["6L", "kd", "1e-3", "true", "null", "a,b", "it's", 0.1, 3, True, None, "x y"])
def test_an_override_parses_back_to_the_sampled_value(value):
    parsed = OverridesParser.create().parse_override(override("key", value))
    assert parsed.value() == value and type(parsed.value()) is type(value)


def test_a_fixed_list_is_set_as_a_list_and_never_sampled():
    param = parse_param("technique.targets", "[encoder,embeddings,'1e-3']")
    assert param.distribution is None and param.fixed == ("encoder", "embeddings", "1e-3")
    text = override(param.key, param.fixed)
    assert text == "technique.targets=[encoder,embeddings,'1e-3']"
    assert OverridesParser.create().parse_override(text).value() == ["encoder", "embeddings", "1e-3"]
    with pytest.raises(ConfigError, match="scalars only"):
        parse_param("technique.targets", "[encoder,[embeddings]]")


def test_the_command_line_splits_into_plain_overrides_and_sweeps():
    fixed, sweeps = split_arguments(["hparams_search=kd_tune", "student=2L,4L", "seed=1",
                                     "technique.alpha=interval(0.1,0.9)"])
    assert fixed == ["hparams_search=kd_tune", "seed=1"]
    assert sweeps == {"student": "2L,4L", "technique.alpha": "interval(0.1,0.9)"}


def definition(tmp_path, **node):
    base = {"study_name": "s", "objectives": ["val/acc"], "directions": ["maximize"], "n_trials": 4,
            "params": {"technique.alpha": "interval(0, 1)"}}
    return SweepDefinition.from_config({**base, **node}, ["seed=1", "technique.temperature=1,2"], root=str(tmp_path))


def test_a_definition_takes_command_line_sweeps_and_defaults_to_a_sqlite_study(tmp_path):
    d = definition(tmp_path)
    assert d.storage == f"sqlite:///{tmp_path}/sweeps/s.db" and (tmp_path / "sweeps").is_dir()
    assert [p.key for p in d.space.params] == ["technique.alpha", "technique.temperature"] and d.fixed == ["seed=1"]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"n_trials": 0}, "hparams_search.n_trials=0"),
        ({"n_jobs": True}, "hparams_search.n_jobs=True"),
        ({"storage": "results.db"}, "SQLAlchemy URL"),
        ({"study_name": "a/b"}, "without /"),
        ({"directions": ["up"]}, "maximize or minimize"),
        ({"objectives": ["val/acc", "eff/disk_bytes"]}, "one of maximize/minimize per objective"),
        ({"sampler": "tpe"}, "null or a node with _target_"),
        ({"trials": 3}, "hparams_search.trials=3 is invalid: one of the keys"),
    ],
)
def test_a_bad_definition_is_refused_in_one_line(tmp_path, node, message):
    with pytest.raises(ConfigError, match=message):
        definition(tmp_path, **node)


def test_objectives_come_from_results_and_a_missing_or_nan_one_is_a_reason():
    objectives = Objectives.parse(["val/acc", "eff/latency_ms_b32"], ["maximize", "minimize"])
    assert objectives.values({"val/acc": 0.7, "eff/latency_ms_b32": 12.0, "x": 1}) == [0.7, 12.0]
    assert objectives.values({"val/acc": math.nan, "eff/latency_ms_b32": 1.0}) == "val/acc is nan"
    assert objectives.values({"val/acc": 0.7}).startswith("eff/latency_ms_b32 is not in the run's results")


def test_a_study_reopens_with_its_directions_and_refuses_others(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    two = Objectives.parse(["val/acc", "eff/disk_bytes"], ["maximize", "minimize"])
    study = open_study("s", url, two)
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)  # several objectives: NSGA-II by default
    assert open_study("s", url, two).user_attrs["objectives"] == ["val/acc", "eff/disk_bytes"]
    with pytest.raises(ConfigError, match="directions study 's' was created with"):
        open_study("s", url, Objectives.parse(["val/acc", "eff/disk_bytes"], ["maximize", "maximize"]))
    with pytest.raises(ConfigError, match="objectives study 's' was created with"):
        open_study("s", url, Objectives.parse(["val/acc", "eff/flops"], ["maximize", "minimize"]))


def test_the_budget_is_the_studys_and_a_dead_workers_trial_is_failed(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    objectives = Objectives.parse(["val/acc"], ["maximize"])
    worker_a, worker_b = open_study("s", url, objectives, heartbeat_s=1), open_study("s", url, objectives, heartbeat_s=1)
    assert trials_to_ask(worker_a, n_trials=3, batch=8) == 3
    done, dead = worker_a.ask(), worker_b.ask()
    tell(worker_a, done, objectives, JobOutcome({"metrics": {"val/acc": 0.5}}, None, None), ["seed=1"])
    with Heartbeat(worker_b, [dead._trial_id], interval=1):  # beats while "running", then the worker dies
        assert trials_to_ask(worker_a, n_trials=3, batch=8) == 1  # one complete, one running
    time.sleep(3.5)  # no beat for more than the grace period (2 x heartbeat_s; SQLite keeps whole seconds)
    assert trials_to_ask(worker_a, n_trials=3, batch=8) == 1  # ... and the dead one is failed, still counted
    states = [t.state for t in worker_a.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]


def test_tell_records_values_failures_and_where_the_run_is(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    objectives = Objectives.parse(["val/acc", "eff/disk_bytes"], ["maximize", "minimize"])
    (tmp_path / "results.json").write_text("{}")
    outcomes = [
        JobOutcome({"metrics": {"val/acc": 0.8, "eff/disk_bytes": 9.0}}, None, str(tmp_path)),
        JobOutcome({"metrics": {"val/acc": 0.7, "eff/disk_bytes": 3.0}}, None, None),
        JobOutcome({"metrics": {"val/acc": 0.6, "eff/disk_bytes": 5.0}}, None, None),  # dominated by the second
        JobOutcome(None, RuntimeError("out of memory"), None),
        JobOutcome(None, optuna.TrialPruned(), None),
    ]
    states = [tell(study, study.ask(), objectives, o, [f"seed={i}"]) for i, o in enumerate(outcomes)]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL, TrialState.PRUNED]
    first, failed = study.trials[0], study.trials[3]
    assert first.user_attrs["results"] == str(tmp_path / "results.json") and first.user_attrs["overrides"] == ["seed=0"]
    assert failed.user_attrs["failure"] == "RuntimeError: out of memory"
    trials_csv, pareto_csv = write_study_tables(study, objectives, tmp_path)
    assert (trials_csv.name, pareto_csv.name) == (TRIALS_CSV, PARETO_CSV)
    pareto = list(csv.DictReader(pareto_csv.open()))
    assert sorted(int(r["number"]) for r in pareto) == [0, 1]
    assert len(list(csv.DictReader(trials_csv.open()))) == 5
    png = plot_study(trials_csv, tmp_path / "report")
    assert png.name == "study_pareto.png" and png.stat().st_size > 10_000


def test_a_three_objective_study_plots_the_first_against_each_other_one(tmp_path):
    from PIL import Image

    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    objectives = Objectives.parse(["val/acc", "eff/speedup_b32", "eff/disk_bytes"], ["maximize", "maximize", "minimize"])
    for acc, speedup, size in ((0.7, 1.0, 90.0), (0.6, 4.0, 20.0), (0.5, 5.0, 95.0), (0.4, 2.0, 99.0)):
        metrics = {"val/acc": acc, "eff/speedup_b32": speedup, "eff/disk_bytes": size}
        tell(study, study.ask(), objectives, JobOutcome({"metrics": metrics}, None, None), [])
    trials_csv, pareto_csv = write_study_tables(study, objectives, tmp_path)
    assert sorted(int(r["number"]) for r in csv.DictReader(pareto_csv.open())) == [0, 1, 2]  # 3 is dominated
    two = tmp_path / "two.csv"  # the same trials read as a two-objective table: one panel
    two.write_text(trials_csv.read_text().replace("maximize;maximize;minimize", "maximize;maximize"))
    width = Image.open(plot_study(trials_csv, tmp_path / "three")).size[0]
    assert width == 2 * Image.open(plot_study(two, tmp_path / "two")).size[0]  # accuracy vs speed-up, vs bytes


def test_a_one_objective_study_plots_its_history(tmp_path):
    study = optuna.create_study(direction="minimize")
    objectives = Objectives.parse(["val/loss"], ["minimize"])
    for value in (3.0, 1.0, 2.0):
        tell(study, study.ask(), objectives, JobOutcome({"metrics": {"val/loss": value}}, None, None), [])
    trials_csv, pareto_csv = write_study_tables(study, objectives, tmp_path)
    assert [r["number"] for r in csv.DictReader(pareto_csv.open())] == ["1"]  # the best trial
    assert plot_study(trials_csv, tmp_path).name == "study_history.png"


def test_a_studys_trials_share_one_wandb_group():
    from omegaconf import OmegaConf

    from hydra_plugins.slimnlp_optuna_sweeper.optuna_sweeper import study_group
    from slimnlp.config import compose_config

    with_wandb = compose_config(["logger=many"]).logger
    assert "wandb" in with_wandb and study_group(with_wandb, "recipes") == ["logger.wandb.group=recipes"]
    assert study_group(compose_config([]).logger, "recipes") == []
    assert OmegaConf.select(compose_config(["logger=many", *study_group(with_wandb, "recipes")]),
                            "logger.wandb.group") == "recipes"
