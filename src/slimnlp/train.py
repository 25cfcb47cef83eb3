"""``python train.py ...``: compose the config, build data, teacher, student and technique, train,
evaluate, measure, and write ``results.json``. The only module besides ``config.py`` that knows Hydra."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from slimnlp.config import check_command_line, config_dir, config_hash, find_error, group_options, to_plain
from slimnlp.errors import ConfigError
from slimnlp.metrics.efficiency import efficiency_metrics, weights_bytes
from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier, load_tokenizer, set_attention_implementation
from slimnlp.results import RESULTS_FILE, build_results, write_json_atomic
from slimnlp.runner import fit_and_test, make_trainer
from slimnlp.summary import print_summary
from slimnlp.teacher_cache import TeacherLogitCache
from slimnlp.teachers import load_teacher
from slimnlp.techniques.base import Stage, TaskInfo, Technique

log = logging.getLogger("slimnlp")
RUN_INFO_FILE = "run_info.json"
STUDENT_RUNNER_KEYS = ("name", "init_from")  # read by the runner, not passed to the student builder
INIT_SOURCES = ("pretrained", "finetuned")


# ----------------------------------------------------------------------------- choices and checks
def choice(group: str, fallback: str) -> str:
    """The option the user picked for a config group (``technique=kd`` → ``kd``)."""
    try:
        return str(HydraConfig.get().runtime.choices.get(group) or fallback)
    except ValueError:  # not inside a Hydra app (a notebook, a test composing by hand)
        return fallback


def technique_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The technique's hyperparameters as plain values (nested nodes such as schedules as dicts)."""
    container = OmegaConf.to_container(cfg.technique, resolve=True)
    assert isinstance(container, dict)
    return {k: v for k, v in container.items() if not str(k).startswith("_")}


def technique_class(cfg: DictConfig) -> type[Technique]:
    cls = get_class(cfg.technique._target_)
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise ConfigError("technique._target_", cfg.technique._target_, "a subclass of slimnlp Technique")
    hparams = technique_hparams(cfg)
    known = set(cls.hparam_signature())
    unknown = sorted(set(hparams) - known)
    if unknown:  # fail now, not after the teacher has been fine-tuned
        raise ConfigError(f"technique.{unknown[0]}", hparams[unknown[0]], f"{cls.__name__} takes: {', '.join(sorted(known))}")
    cls.check_hparams(**hparams)
    return cls


# ---------------------------------------------------------------------------------------- resume
def write_run_info(run_dir: Path, chash: str) -> None:
    write_json_atomic(
        run_dir / RUN_INFO_FILE,
        {"config_hash": chash, "started_at": datetime.now(timezone.utc).isoformat(), "argv": sys.argv[1:]},
    )


def find_resume_checkpoint(cfg: DictConfig, run_dir: Path, chash: str) -> str | None:
    """``resume=true``: the newest unfinished run of this exact config; ``resume=<path>``: that one."""
    if cfg.resume in (False, None, "false"):
        return None
    if cfg.resume not in (True, "true"):
        path = Path(str(cfg.resume))
        path = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError("resume", str(cfg.resume), "true, false, a .ckpt file or a run folder with checkpoints/last.ckpt")
        return str(path)
    candidates = []
    for info_file in Path(cfg.paths.runs_dir).glob(f"*/{RUN_INFO_FILE}"):
        folder = info_file.parent
        last = folder / "checkpoints" / "last.ckpt"
        if folder == run_dir or (folder / RESULTS_FILE).exists() or not last.exists():
            continue
        if json.loads(info_file.read_text()).get("config_hash") == chash:
            candidates.append((last.stat().st_mtime, last))
    if not candidates:
        log.warning("resume=true: no unfinished run of this config under %s; starting afresh", cfg.paths.runs_dir)
        return None
    return str(max(candidates)[1])


# ----------------------------------------------------------------------------------------- models
def build_student(cfg: DictConfig, init_model: Any, num_labels: int) -> Any:
    builder_cfg = OmegaConf.masked_copy(cfg.student, [k for k in cfg.student if k not in STUDENT_RUNNER_KEYS])
    builder = instantiate(builder_cfg, _partial_=True)
    return builder(teacher=init_model, num_labels=num_labels)


def init_source(cfg: DictConfig) -> str:
    source = cfg.student.get("init_from", "pretrained")
    if source not in INIT_SOURCES:
        raise ConfigError("student.init_from", source, f"allowed: {', '.join(INIT_SOURCES)}")
    return source


def make_callbacks(cfg: DictConfig, checkpoint_dir: Path) -> list[Any]:
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if node is None or "_target_" not in node:
            continue
        callbacks.append(instantiate(node, **({"dirpath": str(checkpoint_dir)} if "dirpath" in node else {})))
    return callbacks


def load_ensemble(cfg: DictConfig, tokenizer: Any, num_labels: int, attn: str) -> list[tuple[Any, Path]]:
    """Teachers listed by ``technique.teachers`` (multi-teacher methods): each entry names a
    ``conf/teacher`` option plus an optional seed/checkpoint, and is fine-tuned and cached like the
    main teacher. Returns (model, folder) pairs."""
    models = []
    for i, spec in enumerate(cfg.technique.get("teachers") or []):
        name = spec.get("teacher")
        options = group_options("teacher")
        if name not in options:
            raise ConfigError(f"technique.teachers[{i}].teacher", name, f"available: {', '.join(options)}")
        member = cfg.copy()
        with open_dict(member):
            if name != choice("teacher", cfg.teacher.name):  # the run's own teacher keeps its CLI overrides
                member.teacher = OmegaConf.load(config_dir() / "teacher" / f"{name}.yaml")
            member.seed = spec.get("seed") if spec.get("seed") is not None else cfg.seed
            if spec.get("checkpoint"):
                member.teacher.checkpoint = spec.checkpoint
        models.append(load_teacher(member, tokenizer, num_labels, attn_implementation=attn))
    return models


def make_loggers(cfg: DictConfig, tags: list[str]) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        extra = {"tags": [*tags, *node.get("tags", [])]} if "tags" in node else {}
        loggers.append(instantiate(node, **extra))
        log.debug("logger %s enabled", name)
    return loggers


def finish_loggers(loggers: list[Any], metrics: dict[str, float], step: int) -> None:
    for lg in loggers:
        lg.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step=step)
        lg.finalize("success")
        experiment = getattr(lg, "experiment", None)
        if hasattr(getattr(experiment, "summary", None), "update"):  # W&B: final metrics as the run summary
            experiment.summary.update(metrics)
            experiment.finish()  # writes the run files (and syncs when online)


def train_stages(
    cfg: DictConfig,
    stages: list[Stage],
    student: Any,
    teacher: Any,
    teacher_dir: Path,
    teachers: list[tuple[Any, Path]],
    dm: Any,
    task: TaskInfo,
    loggers: list[Any],
    resume_ckpt: str | None,
) -> tuple[Any, dict[str, float], Path]:
    """Run the technique's stages in order, each taking over the student the previous one exported;
    returns the final student, the final stage's val/test metrics and its checkpoint folder."""
    run_dir = Path(cfg.paths.output_dir)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg.technique, resolve=True))  # ${...} refer to the root
    technique_cfg = OmegaConf.masked_copy(resolved, [k for k in resolved if k != "teachers"])
    metrics: dict[str, float] = {}
    for i, stage in enumerate(stages):
        final = i == len(stages) - 1
        if len(stages) > 1:
            log.info("stage %d/%d: %s", i + 1, len(stages), stage.name)
        build = instantiate(technique_cfg, _partial_=True, **stage.hparams)
        technique = build(
            student=student,
            teacher=teacher,
            task=task,
            optimizer=instantiate(cfg.optim.optimizer),
            lr_scheduler=cfg.optim.lr_scheduler,
            **({"teachers": [model for model, _ in teachers]} if teachers else {}),
        )
        if cfg.cache_teacher_logits and technique.uses_teacher_logits_only:
            def cache_for(folder: Path) -> TeacherLogitCache:
                return TeacherLogitCache.for_run(
                    Path(cfg.paths.cache_dir) / "teacher_logits", folder, dm.fingerprint,
                    len(dm.datasets["train"]), dm.num_labels,
                )

            technique.logit_cache = cache_for(teacher_dir)
            if teachers and hasattr(technique, "attach_logit_caches"):
                technique.attach_logit_caches([cache_for(folder) for _, folder in teachers])
        checkpoints = run_dir / "checkpoints" / (stage.name if len(stages) > 1 else "")
        trainer = make_trainer(
            cfg.trainer,
            callbacks=make_callbacks(cfg, checkpoints),
            loggers=loggers or False,
            **({"max_epochs": stage.max_epochs} if stage.max_epochs else {}),
        )
        metrics = fit_and_test(
            technique, dm, trainer, ckpt_path=resume_ckpt, select_best=stage.select_best, test=final
        )
        student = technique.export_student()
    return student, metrics, checkpoints


def measure_efficiency(cfg: DictConfig, student: Any, teacher: Any, dm: Any, student_dir: Path) -> dict[str, float]:
    """Parameters, bytes on disk and latency of the exported student against the teacher, on the CPU."""
    for model in (student, teacher):  # time both with the same (fast) attention kernel
        set_attention_implementation(model, "sdpa")
    metrics = efficiency_metrics(
        student.cpu(),
        teacher.cpu(),
        dm.fixed_length_batch(cfg.measure.latency_batch_size),
        repeats=cfg.measure.latency_repeats,
        warmup=cfg.measure.latency_warmup,
    )
    metrics["eff/disk_bytes"] = float(weights_bytes(student_dir))
    return metrics


# -------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """One run end to end; returns the results dict that was written to ``results.json``."""
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    resume_ckpt = find_resume_checkpoint(cfg, run_dir, chash)
    write_run_info(run_dir, chash)
    OmegaConf.save(OmegaConf.create(to_plain(cfg)), run_dir / "config.yaml")  # resolved, as run

    technique_name = choice("technique", cfg.technique._target_.rsplit(".", 1)[-1])
    cls = technique_class(cfg)
    source_init = init_source(cfg)
    L.seed_everything(cfg.seed, workers=True)

    teacher_source = resolve_pretrained(cfg.teacher.name_or_path, Path(cfg.paths.cache_dir) / "models")
    tokenizer = load_tokenizer(teacher_source)
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    dm.prepare_data()
    dm.setup("fit")
    write_json_atomic(run_dir / "split.json", dm.split_summary())
    task = TaskInfo.from_datamodule(dm)

    attn = "eager" if cls.needs_attentions else "sdpa"
    if source_init == "pretrained":  # build now: a bad student config fails before teacher fine-tuning
        pretrained = load_classifier(teacher_source, num_labels=dm.num_labels, label_names=list(dm.label_names))
        student = build_student(cfg, pretrained, dm.num_labels)
        del pretrained
    teacher, teacher_dir = load_teacher(cfg, tokenizer, dm.num_labels, attn_implementation=attn)
    if source_init == "finetuned":
        student = build_student(cfg, teacher, dm.num_labels)
    set_attention_implementation(student, attn)

    teachers = load_ensemble(cfg, tokenizer, dm.num_labels, attn)
    stages = cls.stages(**technique_hparams(cfg))
    if resume_ckpt and len(stages) > 1:
        raise ConfigError("resume", cfg.resume, f"{technique_name} runs {len(stages)} stages; resume a single stage "
                          "(technique.stage=...) instead")
    tags = [technique_name, cfg.student.name, task.name, *cfg.get("tags", [])]
    loggers = make_loggers(cfg, tags)
    for lg in loggers:
        lg.log_hyperparams(to_plain(cfg))

    L.seed_everything(cfg.seed, workers=True)  # same training randomness whether or not a teacher was trained
    student, metrics, checkpoints = train_stages(
        cfg, stages, student, teacher, teacher_dir, teachers, dm, task, loggers, resume_ckpt
    )
    exported = student
    student_dir = run_dir / "student"
    exported.save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    metrics.update(measure_efficiency(cfg, exported, teacher, dm, student_dir))
    metrics["time/run_s"] = time.perf_counter() - started

    results = build_results(
        task=task.name,
        technique=technique_name,
        teacher=cfg.teacher.name,
        student=cfg.student.name,
        seed=cfg.seed,
        metrics=metrics,
        run_dir=run_dir,
        artifacts={
            "student_dir": str(student_dir),
            "teacher_dir": str(teacher_dir),
            "best_checkpoint": next((str(p) for p in sorted(checkpoints.glob("best*.ckpt"))), None),
            "resumed_from": resume_ckpt,
        },
        config=to_plain(cfg),
        extra={
            "config_hash": chash,
            "stages": [stage.name for stage in stages],
            "layer_map": getattr(exported.config, "slimnlp_layer_map", None),
        },
    )
    write_json_atomic(run_dir / RESULTS_FILE, results)
    finish_loggers(loggers, metrics, step=0)
    print_summary(results)
    return results


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "?")
        _exit_with(f"{key} is required: set it on the command line ({key}=...)")
    except Exception as err:
        config_error = find_error(err)
        if config_error is None:
            raise
        _exit_with(str(config_error))
    primary = results["metrics"].get(f"val/{cfg.data.primary_metric}")
    return primary  # the objective Optuna sweeps maximize


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):
        try:
            check_command_line(args)
        except ConfigError as err:
            _exit_with(str(err))
    _hydra_main()
