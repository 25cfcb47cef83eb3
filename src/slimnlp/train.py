"""``python train.py ...``: one run as the sequence of its steps. With ``config.py`` the only module that
knows Hydra (the steps take the composed config and hand plain objects to techniques).

1. plan — check the config, the technique's hyperparameters and requirements (``build.plan``);
2. resume — continue an unfinished run in its own folder (``resume``);
3. models — data, student, teacher fine-tuned once and cached, ensembles (``build.build_models``);
4. stages — train or compress, stage by stage (``stages.train_stages``);
5. artifact — save the exported student so that ``slimnlp.load_student`` rebuilds it (``artifacts``);
6. measure — parameters, FLOPs, bytes, latency, memory and energy of what was saved (``measure``), and
   accuracy out of distribution and under perturbation (``evaluation``);
7. results — ``results.json``, loggers, summary.

A task-agnostic run (``Requirements.task`` False: general distillation) saves a plain encoder in step 5 and has no
task to measure in step 6: its results are the held-out loss, the parameters and the budget.

Under DDP every rank runs these steps; side effects (files, caches, measurement) happen on rank 0 only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from slimnlp.build import build_models, plan
from slimnlp.checks import expand_sweep
from slimnlp.config import (
    check_command_line,
    compose_config,
    config_dir,
    config_hash,
    find_error,
    group_options,
    ood_data_configs,
    to_plain,
)
from slimnlp.diagnostics import majority_baselines, model_warnings
from slimnlp.distributed import barrier, is_rank_zero
from slimnlp.errors import ConfigError
from slimnlp.evaluation import beyond_test_metrics
from slimnlp.loggers import finish_loggers, make_loggers
from slimnlp.measure import measure_efficiency
from slimnlp.metrics.energy import EnergyMeter
from slimnlp.metrics.ood import ood_label_map
from slimnlp.results import FAILED_FILE, RESULTS_FILE, build_results, write_json_atomic
from slimnlp.resume import StageRecord, continue_in, find_resume_point, record_start
from slimnlp.stages import train_stages
from slimnlp.summary import print_summary

log = logging.getLogger("slimnlp")


def run(cfg: DictConfig) -> dict[str, Any]:
    """One run end to end; returns the results written to ``results.json`` (an empty dict on ranks > 0)."""
    started = time.perf_counter()
    run_plan = plan(cfg)
    chash = config_hash(cfg)
    resume = find_resume_point(cfg, Path(cfg.paths.output_dir), chash)
    run_dir = continue_in(cfg, resume)
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        record_start(run_dir, chash)
        OmegaConf.save(OmegaConf.create(to_plain(cfg)), run_dir / "config.yaml")  # resolved, as run

    L.seed_everything(cfg.seed, workers=True)
    models = build_models(cfg, run_plan)
    ood_datamodules = build_ood_datamodules(cfg, models.datamodule) if run_plan.needs.task else {}
    loggers = make_loggers(cfg, [run_plan.name, cfg.student.name, models.task.name, *cfg.get("tags", [])])
    for lg in loggers:
        lg.log_hyperparams(to_plain(cfg))
    results: dict[str, Any] = {}
    status = "failed"
    try:
        L.seed_everything(cfg.seed, workers=True)  # same training randomness whether or not a teacher was trained
        energy = EnergyMeter(cfg.energy.country_iso_code, enabled=cfg.energy.enabled)
        with energy.task("train") as training_energy:
            outcome = train_stages(cfg, run_plan, models, loggers, run_dir, resume, trial_callbacks(cfg))
        if is_rank_zero():
            student_dir = outcome.student_dir
            metrics = dict(outcome.metrics)
            if run_plan.needs.task:
                metrics.update(measure_all(cfg, outcome, models, run_dir, energy, ood_datamodules))
            else:  # general distillation saved an encoder for the task stages: nothing to test or time on a task
                metrics["eff/params"] = float(sum(p.numel() for p in outcome.student.parameters()))
            if training_energy.kwh is not None:
                metrics["energy/train_kwh"] = training_energy.kwh
                metrics["energy/co2_kg"] = training_energy.co2_kg
            metrics["train/optimizer_steps"] = float(outcome.steps)
            metrics["time/run_s"] = time.perf_counter() - started
            warnings = []
            if run_plan.needs.task:
                metrics.update(majority_baselines(models.datamodule, models.task))
                warnings = model_warnings(metrics, models.task, cfg.warnings.min_gain, cfg.warnings.confidence)
            for warning in warnings:
                log.warning("%s", warning)
            results = build_results(
                task=models.task.name,
                technique=run_plan.name,
                teacher=cfg.teacher.name,
                student=cfg.student.name,
                seed=cfg.seed,
                metrics=metrics,
                run_dir=run_dir,
                artifacts={
                    "student_dir": str(student_dir),
                    "teacher_dir": str(models.teacher_dir),
                    "onnx": str(run_dir / "student.onnx") if (run_dir / "student.onnx").exists() else None,
                    "best_checkpoint": outcome.best_checkpoint,
                    "resumed_from": str(resume.checkpoint or resume.run_dir) if resume else None,
                },
                config=to_plain(cfg),
                extra={
                    "warnings": warnings,
                    "config_hash": chash,
                    "stages": [stage.name for stage in run_plan.stages],
                    "layer_map": getattr(outcome.student.config, "slimnlp_layer_map", None),
                    "energy_method": energy.method,
                },
            )
            write_json_atomic(run_dir / RESULTS_FILE, results)
            StageRecord.clean(run_dir)
        barrier()
        status = "success"
    finally:
        finish_loggers(loggers, results.get("metrics", {}), status, results.get("warnings", []))
    if results:
        print_summary(results)
    return results


def measure_all(
    cfg: DictConfig, outcome: Any, models: Any, run_dir: Path, energy: EnergyMeter, ood_datamodules: dict[str, Any]
) -> dict[str, float]:
    """Step 6: efficiency of the saved student against the teacher, then OOD and attacks; timed, so the suite's
    own cost is in every results.json (``time/measure_s``, ``time/beyond_test_s``)."""
    student, teacher, dm = outcome.student, models.teacher, models.datamodule
    started = time.perf_counter()
    metrics = measure_efficiency(cfg, student, teacher, dm, outcome.student_dir, models.teacher_dir, run_dir, energy)
    measured = time.perf_counter()
    metrics.update(beyond_test_metrics(cfg, student, teacher, models.teacher_dir, dm, ood_datamodules))
    metrics["time/measure_s"] = measured - started
    metrics["time/beyond_test_s"] = time.perf_counter() - measured
    return metrics


def trial_callbacks(cfg: DictConfig) -> list[Any]:
    """An Optuna sweep trial's pruning callback (``slimnlp.sweep.pruning``), when the study has a pruner."""
    if cfg.get("trial") is None or not cfg.get("hparams_search"):
        return []
    from slimnlp.sweep.definition import SweepDefinition
    from slimnlp.sweep.pruning import trial_pruning

    search = SweepDefinition.from_config(OmegaConf.to_container(cfg.hparams_search, resolve=True), None,
                                         root=str(cfg.paths.root_dir))
    pruner = instantiate(search.pruner) if search.pruner else None
    callback = trial_pruning(cfg.trial, search.study_name, search.storage, list(search.objectives.names), pruner)
    return [callback] if callback else []


def build_ood_datamodules(cfg: DictConfig, dm: Any) -> dict[str, Any]:
    """``eval.ood``'s datamodules, tokenized with the run's tokenizer, their label names checked against the
    task's before anything trains."""
    datamodules = {}
    for node in ood_data_configs(cfg):
        ood_dm = instantiate(node, tokenizer=dm.tokenizer)
        ood_dm.prepare_data()
        ood_dm.setup()
        ood_label_map(dm.label_names, ood_dm.label_names, node.task_name)
        datamodules[node.task_name] = ood_dm
    return datamodules


def _record_failure(err: BaseException) -> None:
    """A failed job of a multirun leaves ``failed.json`` in its folder and lets the sweep go on."""
    try:
        folder = Path(HydraConfig.get().runtime.output_dir)
        write_json_atomic(
            folder / FAILED_FILE,
            {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exception(err)},
        )
    except Exception:  # recording the failure must not raise a second error
        log.exception("could not record the failure")


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    """One job; returns its results for a sweeper (the Optuna sweeper reads its objectives from them), None for
    a failed job of a multirun. A pruned Optuna trial raises ``optuna.TrialPruned`` for the sweeper to record."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        results = run(cfg)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "?")
        _exit_with(f"{key} is required: set it on the command line ({key}=...)")
    except Exception as err:
        if _is_pruned(err):
            raise
        config_error = find_error(err)
        if multirun:  # one failed job never takes the sweep down
            log.error("job failed: %s", config_error or f"{type(err).__name__}: {err}")
            _record_failure(err)
            return None
        if config_error is None:
            raise
        _exit_with(str(config_error))
    return results


def _is_pruned(err: BaseException) -> bool:
    import optuna

    return isinstance(err, optuna.TrialPruned)


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def preflight(args: list[str]) -> None:
    """Check a command line before Hydra starts, so a bad value ends in one line before anything trains. A
    ``-m`` line is checked job by job (each job's config composed and planned), so one bad combination fails
    the sweep up front instead of running as a failed job; an Optuna search (``hparams_search=...``) is checked
    over its search space (``check_search``). Command lines with other Hydra flags (``--cfg``,
    ``--config-name`` …) are left to Hydra."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if any(flag not in ("-m", "--multirun") for flag in flags):
        return
    if not flags:
        check_command_line(overrides)  # the rest is checked by run()'s plan, still before anything is built
        return
    from slimnlp.sweep.definition import split_arguments

    fixed, _ = split_arguments(overrides)
    check_command_line(fixed)
    cfg = compose_config(fixed)
    if cfg.get("hparams_search"):
        check_search(cfg, overrides)
        return
    for job in expand_sweep(overrides):
        check_command_line(job)
        _planned(job)


def check_search(cfg: DictConfig, overrides: list[str], limit: int = 64) -> None:
    """An Optuna search, before its first trial: the definition (objectives, search space, storage reachable,
    directions matching a study of the same name), then every combination of categorical choices composed and
    planned with numeric parameters at both ends of their ranges (the first ``limit`` combinations)."""
    import itertools

    from slimnlp.sweep.definition import SweepDefinition
    from slimnlp.sweep.study import open_study

    _as_launched(cfg)
    search = SweepDefinition.from_config(OmegaConf.to_container(cfg.hparams_search, resolve=True), overrides,
                                         root=str(cfg.paths.root_dir))
    space = search.space
    assert space is not None
    for values in itertools.islice(space.configurations(), limit):
        job = [*search.fixed, *space.overrides(values)]
        check_command_line(job)
        _planned(job)
    open_study(search.study_name, search.storage, search.objectives, heartbeat_s=None)


def _planned(job: list[str]) -> DictConfig:
    """A job's config composed as Hydra's launcher would and planned (``build.plan``); nothing is written."""
    cfg = _as_launched(compose_config(job))
    plan(cfg)
    return cfg


def _as_launched(cfg: DictConfig, output_dir: str | None = None) -> DictConfig:
    """``cfg`` with what Hydra's launcher would fill in, registered as the current Hydra config."""
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.output_dir = output_dir or os.path.join(os.getcwd(), "preflight")
    HydraConfig.instance().set_config(cfg)
    return cfg


def pipeline_main(overrides: list[str]) -> dict[str, Any]:
    """``python train.py pipeline=<name> [overrides for every stage]`` (``slimnlp.pipeline``): every stage's config
    composed and planned and the chain checked before the first stage trains, then the stages run in this process,
    each a plain ``run``."""
    from slimnlp.pipeline import run_pipeline, stage_overrides

    name, stages, common, digest, folder = plan_pipeline(overrides)

    def run_stage(k: int, resume: Any) -> dict[str, Any]:
        job = [*stage_overrides(stages, k, common, folder), *([f"resume={resume}"] if resume else [])]
        return run(_as_launched(compose_config(job), output_dir=str(folder)))

    return run_pipeline(name, stages, folder, digest, sys.argv[1:], run_stage)


def plan_pipeline(overrides: list[str]) -> tuple[str, list[Any], list[str], str, Path]:
    """A pipeline command line checked before anything trains: its stages, the overrides common to them, the
    definition's hash and its folder (new, or the one ``resume`` continues). Every stage is composed and planned (a
    later stage's student does not exist yet: it is planned on the teacher's source) and the chain is checked."""
    from slimnlp.build import technique_class
    from slimnlp.pipeline import check_chain, definition_hash, parse_stages, pipeline_folder, stage_overrides

    check_command_line(overrides)
    cfg = _as_launched(compose_config(overrides))
    name = str(cfg.hydra.runtime.choices.get("pipeline"))
    stages = parse_stages(OmegaConf.to_container(cfg.pipeline.stages, resolve=True))
    common = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] not in ("pipeline", "resume")]
    digest = definition_hash(name, stages, common)
    folder = pipeline_folder(Path(cfg.paths.output_root) / "pipelines", name, digest, cfg.resume)
    quantizes = []
    for k in range(len(stages)):
        job = stage_overrides(stages, k, common, folder)
        job = [o if not o.startswith("student.path=") else "student.path=${teacher.name_or_path}" for o in job]
        check_command_line(job)
        quantizes.append(technique_class(_planned(job)).exports_quantized)
    check_chain(stages, quantizes)
    return name, stages, common, digest, folder


def with_scale(args: list[str]) -> list[str]:
    """``experiment=<paper row> scale=cpu``: the command line with the row's own CPU-scale overrides appended
    (``paper.cpu.overrides``: its student at this scale), which a scale file cannot choose for every row."""
    if not any(a.startswith("scale=") for a in args) or any(a.startswith("-") for a in args):
        return args
    check_command_line(args)
    cfg = compose_config(args)
    overrides = OmegaConf.select(cfg, "paper.cpu.overrides")
    if overrides is None:
        rows = ", ".join(o for o in group_options("experiment")
                         if OmegaConf.select(OmegaConf.load(config_dir() / "experiment" / f"{o}.yaml"), "paper.cpu"))
        raise ConfigError("scale", cfg.hydra.runtime.choices.get("scale"),
                          f"a paper row to scale: experiment=<row> with paper.cpu ({rows})")
    return [*args, *[str(o) for o in overrides]]


def main() -> None:
    args = sys.argv[1:]
    try:
        args = sys.argv[1:] = with_scale(args)
        if any(a.lstrip("+").startswith("pipeline=") for a in args) and not any(a.startswith("-") for a in args):
            logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
            pipeline_main(args)
            return
        preflight(args)
    except ConfigError as err:
        _exit_with(str(err))
    _hydra_main()
