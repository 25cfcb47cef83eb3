"""Fine-tuned teachers, cached: a teacher must know the task before it teaches.

The first run that needs a teacher for (pretrained source, task data, fine-tune recipe) fine-tunes it with
the same Lightning loop as any technique (``FineTune``) and publishes it under ``paths.teachers_dir``; later
runs load it. The recipe is the teacher's own (``teacher.finetune``: seed, epochs, optimizer, LR schedule,
batch size, precision, clipping, accumulation, training budget), so nothing of the student's — ``optim.*``,
``seed``, ``data.max_train_samples`` — changes or re-trains the teacher, and ``-m seed=0,1,2`` trains three
students from one teacher. The cache key holds the whole recipe plus every Trainer setting that changes
what fine-tuning computes (``limit_train_batches``, ``val_check_interval``, accelerator …), so a changed
setting never silently reuses an old teacher.

Two processes that need the same teacher at once (two sweep workers) fine-tune it once: a file lock is held
around fine-tuning and publishing; the second process waits, then loads what the first published. Under
DDP the launching process (rank 0) fine-tunes on one device before the other ranks exist; they load it.

A teacher that learned nothing never teaches (``slimnlp.diagnostics``): after fine-tuning, a teacher whose
validation primary metric does not beat always predicting the majority class by ``teacher.finetune.min_gain``
is not published and the run ends with one line naming the recipe keys to change; a cached teacher and a
``teacher.checkpoint`` pass the same check (the checkpoint is validated on this task's validation split).
Small datasets get enough optimizer steps through ``teacher.finetune.min_steps`` (``slimnlp.budget``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from slimnlp.budget import epochs_for_min_steps, steps_per_epoch
from slimnlp.diagnostics import learned_nothing, majority_baselines
from slimnlp.distributed import is_rank_zero
from slimnlp.errors import ConfigError
from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier
from slimnlp.results import RESULTS_FILE, build_results, load_results, write_json_atomic
from slimnlp.runner import fit_and_select, make_trainer
from slimnlp.techniques.base import TaskInfo
from slimnlp.techniques.finetune import FineTune

log = logging.getLogger(__name__)

# Trainer settings the teacher takes from its own recipe rather than from the run's trainer.
RECIPE_TRAINER_KEYS = ("precision", "gradient_clip_val", "accumulate_grad_batches")
# Trainer settings that never change what fine-tuning computes: left out of the cache key.
PRESENTATION_KEYS = (
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    "default_root_dir",
    "num_sanity_val_steps",
)


# Recipe keys left out of the cache key: epochs and min_steps act through the epochs fine-tuning runs (the
# key's trainer.max_epochs); min_gain decides whether a result is published, not what is computed.
NOT_IN_KEY = ("epochs", "min_steps", "min_gain")


def teacher_trainer_config(cfg: DictConfig, num_examples: int) -> dict[str, Any]:
    """The run's ``trainer`` as teacher fine-tuning runs it on ``num_examples`` training examples: one device
    (under DDP, rank 0 alone, before the other ranks start), the recipe's epochs (raised on small data to
    ``min_steps`` optimizer steps) and numerics, no step cap."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)
    ft = cfg.teacher.finetune
    trainer.update({key: ft[key] for key in RECIPE_TRAINER_KEYS})
    per_epoch = steps_per_epoch(
        num_examples, ft.get("batch_size") or cfg.data.batch_size, 1, ft.accumulate_grad_batches,
        trainer.get("limit_train_batches"),
    )
    epochs = epochs_for_min_steps(ft.epochs, ft.get("min_steps") or 0, per_epoch)
    trainer.update(max_epochs=epochs, max_steps=-1, devices=1, strategy="auto")
    return trainer


def recipe(cfg: DictConfig, data_fingerprint: str, num_examples: int) -> dict[str, Any]:
    """Everything the fine-tuned teacher depends on, and nothing else (the cache key)."""
    trainer = {k: v for k, v in teacher_trainer_config(cfg, num_examples).items() if k not in PRESENTATION_KEYS}
    finetune = OmegaConf.to_container(cfg.teacher.finetune, resolve=True)
    assert isinstance(finetune, dict)
    return {
        "source": cfg.teacher.name_or_path,
        "data": data_fingerprint,
        "finetune": {k: v for k, v in finetune.items() if k not in NOT_IN_KEY},
        "trainer": trainer,
    }


def cache_folder(cfg: DictConfig, data_fingerprint: str, num_examples: int) -> Path:
    digest = hashlib.sha256(
        json.dumps(recipe(cfg, data_fingerprint, num_examples), sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    seed = cfg.teacher.finetune.seed
    return Path(cfg.paths.teachers_dir) / cfg.teacher.name / cfg.data.task_name / f"seed{seed}-{digest}"


def teacher_datamodule(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The task data at the teacher's own training budget (same split, same tokenized cache)."""
    ft = cfg.teacher.finetune
    overrides: dict[str, Any] = {"max_train_samples": ft.get("max_train_samples")}
    if ft.get("batch_size"):
        overrides["batch_size"] = ft.batch_size
    dm = instantiate(cfg.data, tokenizer=tokenizer, **overrides)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def finetune_teacher(cfg: DictConfig, dm: Any, source: str, folder: Path) -> None:
    """Fine-tune the pretrained teacher on the task and publish it atomically at ``folder``."""
    ft = cfg.teacher.finetune
    work = folder.with_name(folder.name + ".partial")  # kept on failure: a rerun resumes from it
    last = work / "checkpoints" / "last.ckpt"
    L.seed_everything(ft.seed, workers=True)
    model = load_classifier(source, num_labels=dm.num_labels, label_names=list(dm.label_names))
    technique = FineTune(
        student=model,
        task=TaskInfo.from_datamodule(dm),
        optimizer=instantiate(ft.optimizer, lr=ft.lr),
        lr_scheduler=OmegaConf.to_container(ft.lr_scheduler, resolve=True),
    )
    callbacks = [
        ModelCheckpoint(
            dirpath=work / "checkpoints",
            filename="best",
            monitor=f"val/{dm.primary_metric}",
            mode="max",
            save_top_k=1,
            save_last=True,
            save_on_exception=True,
        )
    ]
    num_examples = len(dm.datasets["train"])
    trainer = make_trainer(
        teacher_trainer_config(cfg, num_examples),
        callbacks=callbacks,
        loggers=[CSVLogger(work, name="csv", version="")],
        default_root_dir=str(work),
    )
    # No test pass here: every run this teacher teaches tests it on the same examples (teacher/test/*).
    metrics = fit_and_select(technique, dm, trainer, ckpt_path=str(last) if last.exists() else None).metrics
    metrics.update(majority_baselines(dm, technique.task, ["val"]))
    metrics["train/optimizer_steps"] = float(trainer.global_step)
    results = build_results(
        task=dm.task_name,
        technique="finetune",
        teacher=None,
        student=cfg.teacher.name,
        seed=ft.seed,
        metrics=metrics,
        run_dir=folder,
        extra={"split": dm.split_summary(), "recipe": recipe(cfg, dm.fingerprint, num_examples)},
    )
    why = why_refused(metrics, dm, ft.get("min_gain"))
    if why:
        # Not published; the metrics stay beside the cache for inspection, the checkpoints go.
        write_json_atomic(folder.with_name(folder.name + ".refused.json"), results)
        shutil.rmtree(work, ignore_errors=True)
        raise TeacherDidNotLearn(
            "teacher.finetune", f"the fine-tuned {cfg.teacher.name} did not learn {dm.task_name} in "
            f"{trainer.global_step} optimizer steps ({why}), so it was not cached: change the recipe, e.g. "
            f"teacher.finetune.lr (now {ft.lr:g}), teacher.finetune.epochs (now {ft.epochs}) or "
            f"teacher.finetune.min_steps (now {ft.get('min_steps') or 0})"
        )
    technique.student.save_pretrained(work / "model")
    dm.tokenizer.save_pretrained(work / "model")
    write_json_atomic(work / "model" / RESULTS_FILE, results)
    (work / "model").rename(folder)
    shutil.rmtree(work, ignore_errors=True)
    log.info(
        "fine-tuned teacher cached at %s (val/%s=%.4f)",
        folder,
        dm.primary_metric,
        metrics.get(f"val/{dm.primary_metric}", float("nan")),
    )


def why_refused(metrics: dict[str, float], dm: Any, min_gain: float | None) -> str | None:
    """Why a teacher with these validation metrics must not teach (None: it may; ``min_gain`` null: no gate)."""
    if min_gain is None:
        return None
    baseline = majority_baselines(dm, TaskInfo.from_datamodule(dm), ["val"])
    return learned_nothing({**metrics, **baseline}, "", "val", dm.primary_metric, min_gain)


class TeacherDidNotLearn(ConfigError):
    """The teacher does not beat the majority-class baseline on validation: one line, the keys to change."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, None, "", message=f"{key}: {message}")


def _published(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def cached_teacher(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The folder of the fine-tuned teacher for this recipe, fine-tuning it first (once, under a lock)."""
    dm = teacher_datamodule(cfg, tokenizer)
    folder = cache_folder(cfg, dm.fingerprint, len(dm.datasets["train"]))
    if _published(folder):
        log.info("teacher: reusing the cached fine-tuned %s at %s", cfg.teacher.name, folder)
        _check_cached(cfg, dm, folder)
        return folder
    if not is_rank_zero():
        raise RuntimeError(f"teacher {folder} is not published: rank 0 fine-tunes it before other ranks start")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock"):
        if _published(folder):  # another process fine-tuned it while this one waited for the lock
            log.info("teacher: reusing the cached fine-tuned %s at %s (published while waiting)", cfg.teacher.name,
                     folder)
            _check_cached(cfg, dm, folder)
            return folder
        log.warning(
            "teacher: no fine-tuned %s for task %s (recipe seed %s) in the cache: fine-tuning it first (%s epochs)",
            cfg.teacher.name, dm.task_name, cfg.teacher.finetune.seed,
            teacher_trainer_config(cfg, len(dm.datasets["train"]))["max_epochs"],
        )
        source = resolve_pretrained(cfg.teacher.name_or_path, Path(cfg.paths.cache_dir) / "models")
        finetune_teacher(cfg, dm, source, folder)
    return folder


def _check_cached(cfg: DictConfig, dm: Any, folder: Path) -> None:
    """A cached teacher passed the gate at the ``min_gain`` it was published under; check it at today's."""
    why = why_refused(load_results(folder)["metrics"], dm, cfg.teacher.finetune.get("min_gain"))
    if why:
        raise TeacherDidNotLearn(
            "teacher.finetune.min_gain", f"the cached fine-tuned {cfg.teacher.name} at {folder} did not learn "
            f"{dm.task_name} ({why}): lower teacher.finetune.min_gain (now {cfg.teacher.finetune.min_gain:g}) or change "
            f"the recipe (teacher.finetune.lr, teacher.finetune.epochs, teacher.finetune.min_steps)"
        )


def validate_checkpoint(cfg: DictConfig, model: PreTrainedModel, dm: Any, folder: Path) -> dict[str, float]:
    """A ``teacher.checkpoint`` on this task's validation split, gated like a fine-tuned teacher."""
    task = TaskInfo.from_datamodule(dm)
    trainer = make_trainer(
        {**teacher_trainer_config(cfg, len(dm.datasets["train"])), "enable_progress_bar": False},
        callbacks=[], loggers=False, enable_model_summary=False,
    )
    metrics = dict(trainer.validate(FineTune(student=model, task=task), datamodule=dm, verbose=False)[0])
    why = why_refused(metrics, dm, cfg.teacher.finetune.get("min_gain"))
    if why:
        raise TeacherDidNotLearn(
            "teacher.checkpoint", f"the teacher at {folder} does not know {dm.task_name} ({why}): use a teacher "
            f"fine-tuned on this task (or leave teacher.checkpoint unset to fine-tune one)"
        )
    model.eval()
    return metrics


def check_label_names(folder: str | Path, label_names: list[str], key: str = "teacher.checkpoint") -> None:
    """A fine-tuned checkpoint must predict this task's labels in this order (generic ``LABEL_i`` names, which
    carry no information, pass)."""
    config = AutoConfig.from_pretrained(str(folder))
    theirs = [config.id2label[i] for i in range(len(config.id2label))] if config.id2label else []
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(theirs))
    if theirs and not generic and theirs != list(label_names):
        raise ConfigError(
            key, str(folder), f"a teacher fine-tuned on this task's labels {list(label_names)} in this order; "
            f"it predicts {theirs}"
        )


def load_teacher(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, dm: Any) -> tuple[PreTrainedModel, Path]:
    """The fine-tuned teacher for the task of ``dm``: ``teacher.checkpoint`` (validated on ``dm``), else the
    cache, else fine-tune now."""
    label_names = list(dm.label_names)
    if not cfg.teacher.get("checkpoint"):
        folder = cached_teacher(cfg, tokenizer)
        return load_classifier(str(folder), num_labels=len(label_names)), folder
    folder = Path(resolve_pretrained(cfg.teacher.checkpoint, Path(cfg.paths.cache_dir) / "models",
                                     key="teacher.checkpoint"))
    check_label_names(folder, label_names)
    model = load_classifier(str(folder), num_labels=len(label_names))
    metrics = validate_checkpoint(cfg, model, dm, folder)
    log.info("teacher: using the fine-tuned checkpoint %s (val/%s=%.4f)", folder, dm.primary_metric,
             metrics[f"val/{dm.primary_metric}"])
    return model, folder
