"""The stage loop: build each stage's technique, train it (or compress it), hand its exported student on.

A stage's technique gets what its requirements ask for and nothing it did not: teacher-logit caches only
when logits are all it reads, ``find_unused_parameters`` under DDP only when a step leaves parameters
unused, calibration batches only when it does not train. A stage may set its own epochs, peak LR and LR
schedule (``Stage``); on small data its epochs are raised to ``min_steps`` optimizer steps (``slimnlp.budget``).
Finished stages of a resumed run are loaded from their record instead of re-run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from slimnlp.artifacts import load_encoder, load_student, save_encoder, save_student
from slimnlp.budget import apply_min_steps, split_steps
from slimnlp.build import Models, RunPlan
from slimnlp.distributed import barrier, is_rank_zero
from slimnlp.resume import ResumePoint, StageRecord
from slimnlp.runner import fit_and_select, make_trainer, test_metrics
from slimnlp.teacher_cache import TeacherLogitCache
from slimnlp.techniques.base import Requirements, Stage, Technique

log = logging.getLogger("slimnlp")
# Strategies Lightning also registers as "<name>_find_unused_parameters_true".
_FIND_UNUSED = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


@dataclass
class Outcome:
    student: PreTrainedModel  # the last stage's export, as reloaded from its artifact
    student_dir: Path  # that artifact
    metrics: dict[str, float]  # the last stage's val metrics, and the test metrics of the reloaded artifact
    steps: int  # optimizer steps over all stages
    best_checkpoint: str | None = None  # the checkpoint the last stage's student was restored from, if any


def build_technique(
    cfg: DictConfig, run: RunPlan, stage: Stage, student: PreTrainedModel, models: Models
) -> Technique:
    """The stage's technique with the runner's arguments; the stage may override the LR and its schedule."""
    optimizer = instantiate(cfg.optim.optimizer, **({"lr": stage.lr} if stage.lr is not None else {}))
    lr_scheduler = {**OmegaConf.to_container(cfg.optim.lr_scheduler, resolve=True), **(stage.lr_scheduler or {})}
    hparams = {k: v for k, v in {**run.hparams, **stage.hparams}.items() if k != "teachers"}
    extra = {"teachers": [model for model, _ in models.teachers]} if run.needs.extra_teachers else {}
    return run.cls(
        student=student,
        teacher=models.teacher,
        task=models.task,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        **extra,
        **hparams,
    )


def attach_caches(cfg: DictConfig, technique: Technique, needs: Requirements, models: Models) -> None:
    if not (cfg.cache_teacher_logits and needs.cacheable_teacher_logits):
        return
    dm = models.datamodule

    def cache_for(folder: Path) -> TeacherLogitCache:
        root = Path(cfg.paths.cache_dir) / "teacher_logits"
        return TeacherLogitCache.for_run(root, folder, dm.fingerprint, len(dm.datasets["train"]), dm.num_labels)

    technique.attach_logit_caches(cache_for(models.teacher_dir), [cache_for(folder) for _, folder in models.teachers])


def make_callbacks(cfg: DictConfig, checkpoint_dir: Path) -> list[Any]:
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if node is None or "_target_" not in node:
            continue
        callbacks.append(instantiate(node, **({"dirpath": str(checkpoint_dir)} if "dirpath" in node else {})))
    return callbacks


def strategy_for(cfg: DictConfig, needs: Requirements) -> dict[str, Any]:
    strategy = cfg.trainer.get("strategy", "auto")
    if needs.find_unused_parameters and strategy in _FIND_UNUSED:
        return {"strategy": f"{strategy}_find_unused_parameters_true"}
    return {}


def train_stages(
    cfg: DictConfig,
    run: RunPlan,
    models: Models,
    loggers: list[Any],
    run_dir: Path,
    resume: ResumePoint | None,
    final_callbacks: list[Any] | None = None,
) -> Outcome:
    """Run the technique's stages in order, each taking over the student the previous one exported;
    ``final_callbacks`` (an Optuna trial's pruning) watch the last stage only."""
    student, metrics, steps, best = models.student, {}, 0, None
    multi = len(run.stages) > 1
    budgets = _step_budgets(cfg, run.stages)
    for i, (stage, needs) in enumerate(zip(run.stages, run.stage_needs)):
        final = i == len(run.stages) - 1
        record = StageRecord(run_dir, stage.name)
        if multi and record.done():
            done = record.load()
            log.info("stage %d/%d: %s finished before the resume; loading its student", i + 1, len(run.stages),
                     stage.name)
            student, steps = load_student(record.student_dir), steps + int(done["steps"])
            continue
        if multi:
            log.info("stage %d/%d: %s", i + 1, len(run.stages), stage.name)
        technique = build_technique(cfg, run, stage, student, models)
        attach_caches(cfg, technique, needs, models)
        checkpoints = run_dir / "checkpoints" / (stage.name if multi else "")
        trainer = make_trainer(
            cfg.trainer,
            callbacks=[*make_callbacks(cfg, checkpoints), *(final_callbacks or [] if final else [])],
            loggers=loggers or False,
            **({"max_epochs": stage.max_epochs} if stage.max_epochs else {}),
            **({"max_steps": budgets[i], "max_epochs": -1} if budgets else {}),
            **strategy_for(cfg, needs),
        )
        if needs.trains:
            dm = models.datamodule
            apply_min_steps(trainer, len(dm.datasets["train"]), dm.batch_size, cfg.get("min_steps") or 0,
                            who=f"stage {stage.name}" if multi else "student")
        metrics, best = fit_and_select(
            technique,
            models.datamodule,
            trainer,
            ckpt_path=_checkpoint_to_resume(resume, checkpoints, first=i == 0),
            select_best=stage.select_best,
            calibration=None if needs.trains else _calibration(cfg, models),
        )
        steps += trainer.global_step
        student = technique.export_student()
        metrics.update(technique.compression_metrics())
        if multi and not final:
            if is_rank_zero():
                record.save(student, models.tokenizer, metrics, trainer.global_step)
            barrier()
    student_dir = run_dir / "student"
    if not run.needs.task:  # general distillation: a plain HF encoder for the task stages to start from
        if is_rank_zero():
            save_encoder(student, student_dir, models.tokenizer)
        barrier()
        return Outcome(load_encoder(student_dir), student_dir, metrics, steps, best)
    # What is tested and measured is what was saved: the artifact, reloaded as a user would.
    if is_rank_zero():
        save_student(student, student_dir, models.tokenizer)
    barrier()
    technique.student = load_student(student_dir)
    metrics.update(test_metrics(technique, models.datamodule, trainer))
    return Outcome(technique.student, student_dir, metrics, steps, best)


def _step_budgets(cfg: DictConfig, stages: list[Stage]) -> list[int] | None:
    """Each stage's optimizer steps under a run budget (``trainer.max_steps > 0``: ``slimnlp.budget``), or None."""
    total = int(cfg.trainer.get("max_steps") or -1)
    if total <= 0:
        return None
    budgets = split_steps(total, [stage.budget_share for stage in stages])
    if len(stages) > 1:
        log.info("step budget: trainer.max_steps=%d split over the stages as %s", total,
                 ", ".join(f"{stage.name} {steps}" for stage, steps in zip(stages, budgets)))
    return budgets


def _checkpoint_to_resume(resume: ResumePoint | None, checkpoints: Path, first: bool) -> str | None:
    if resume is None:
        return None
    if resume.checkpoint is not None:
        return str(resume.checkpoint) if first else None
    last = checkpoints / "last.ckpt"
    return str(last) if last.is_file() else None


def _calibration(cfg: DictConfig, models: Models) -> Any:
    return models.datamodule.calibration_dataloader(cfg.calibration.num_samples, cfg.calibration.batch_size)
