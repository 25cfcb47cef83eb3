"""Fine-tuned teachers, cached: a teacher must know the task before it teaches.

The first run that needs (teacher, task data, fine-tune recipe, seed) fine-tunes it with the same
Lightning loop as any technique (``FineTune``) and saves it under ``paths.teachers_dir``; later runs load
it. The teacher's own training budget (``teacher.finetune.max_train_samples``) is independent of the
student's, so students trained on different budgets share one teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier
from slimnlp.results import build_results, write_json_atomic
from slimnlp.runner import fit_and_test, make_trainer
from slimnlp.techniques.base import TaskInfo
from slimnlp.techniques.finetune import FineTune

log = logging.getLogger(__name__)


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


def cache_folder(cfg: DictConfig, data_fingerprint: str) -> Path:
    recipe = {
        "source": cfg.teacher.name_or_path,
        "data": data_fingerprint,
        "finetune": OmegaConf.to_container(cfg.teacher.finetune, resolve=True),
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "precision": cfg.trainer.precision,
        "seed": cfg.seed,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(cfg.paths.teachers_dir) / cfg.teacher.name / cfg.data.task_name / f"seed{cfg.seed}-{digest}"


def finetune_teacher(cfg: DictConfig, dm: Any, source: str, folder: Path) -> None:
    """Fine-tune the pretrained teacher on the task and publish it atomically at ``folder``."""
    ft = cfg.teacher.finetune
    work = folder.with_name(folder.name + ".partial")  # kept on failure: a rerun resumes from it
    last = work / "checkpoints" / "last.ckpt"
    model = load_classifier(source, num_labels=dm.num_labels, label_names=list(dm.label_names))
    technique = FineTune(
        student=model,
        task=TaskInfo.from_datamodule(dm),
        optimizer=instantiate(cfg.optim.optimizer, lr=ft.lr),
        lr_scheduler=cfg.optim.lr_scheduler,
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
    trainer = make_trainer(
        cfg.trainer,
        callbacks=callbacks,
        loggers=[CSVLogger(work, name="csv", version="")],
        max_epochs=ft.epochs,
        max_steps=-1,
        default_root_dir=str(work),
    )
    # No test pass here: every run this teacher teaches tests it on the same examples (teacher/test/*).
    metrics = fit_and_test(technique, dm, trainer, ckpt_path=str(last) if last.exists() else None, test=False)
    technique.student.save_pretrained(work / "model")
    dm.tokenizer.save_pretrained(work / "model")
    write_json_atomic(
        work / "model" / "results.json",
        build_results(
            task=dm.task_name,
            technique="finetune",
            teacher=None,
            student=cfg.teacher.name,
            seed=cfg.seed,
            metrics=metrics,
            run_dir=folder,
            extra={"split": dm.split_summary()},
        ),
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    (work / "model").rename(folder)
    shutil.rmtree(work, ignore_errors=True)
    log.info("fine-tuned teacher cached at %s (val/%s=%.4f)", folder, dm.primary_metric,
             metrics.get(f"val/{dm.primary_metric}", float("nan")))


def load_teacher(
    cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, num_labels: int, attn_implementation: str = "sdpa"
) -> tuple[PreTrainedModel, Path]:
    """The fine-tuned teacher for this task: ``teacher.checkpoint``, else the cache, else fine-tune now."""
    if cfg.teacher.get("checkpoint"):
        folder = Path(resolve_pretrained(cfg.teacher.checkpoint, Path(cfg.paths.cache_dir) / "models"))
        log.info("teacher: using the fine-tuned checkpoint %s", folder)
    else:
        dm = teacher_datamodule(cfg, tokenizer)
        folder = cache_folder(cfg, dm.fingerprint)
        if (folder / "config.json").is_file():
            log.info("teacher: reusing the cached fine-tuned %s at %s", cfg.teacher.name, folder)
        else:
            log.warning(
                "teacher: no fine-tuned %s for task %s (seed %s) in the cache: fine-tuning it first (%s epochs)",
                cfg.teacher.name, dm.task_name, cfg.seed, cfg.teacher.finetune.epochs,
            )
            source = resolve_pretrained(cfg.teacher.name_or_path, Path(cfg.paths.cache_dir) / "models")
            finetune_teacher(cfg, dm, source, folder)
    model = load_classifier(str(folder), num_labels=num_labels, attn_implementation=attn_implementation)
    return model, folder
