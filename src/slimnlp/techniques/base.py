"""The base class every compression technique extends.

A technique is a LightningModule that owns the student (a registered submodule: trained, checkpointed,
moved by Lightning) and holds the teacher *unregistered*: frozen, in eval mode, never in the optimizer,
never written into checkpoints, never wrapped by DDP. Subclasses write only what is their own idea:

- ``training_loss(batch)``: the objective, as a dict with ``loss`` and named components;
- ``prepare_student()``: rewrite the student's modules once at setup (masks, fake-quant, replacing);
- ``compress(datamodule)``: the whole job of a post-training technique (``trains = False``);
- ``export_student()``: the model that is measured and saved (materialized, quantized …).

Validation and test are shared: every technique is evaluated by the same code, which is what makes the
comparison between techniques fair.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from transformers import PreTrainedModel, get_scheduler
from transformers.modeling_outputs import SequenceClassifierOutput

from slimnlp.errors import ConfigError
from slimnlp.metrics.classification import metric_collection
from slimnlp.teacher_cache import TeacherLogitCache

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
RUNNER_ARGS = ("self", "student", "teacher", "task", "optimizer", "lr_scheduler")  # not hyperparameters
OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class Stage:
    """One training phase of a technique; the runner runs a technique's stages in order, handing the
    student exported by one stage to the next (TinyBERT: intermediate → prediction layer)."""

    name: str
    hparams: Mapping[str, Any] = field(default_factory=dict)  # overrides of the technique's hyperparameters
    max_epochs: int | None = None  # None: trainer.max_epochs
    select_best: bool = True  # restore the best validation checkpoint at the end of the stage


@dataclass(frozen=True)
class TaskInfo:
    """What the shared evaluation needs to know about the task; read off the datamodule."""

    name: str
    num_labels: int
    metrics: tuple[str, ...] = ("acc", "f1")
    primary_metric: str = "acc"
    test_split_names: tuple[str, ...] = ("test",)

    @classmethod
    def from_datamodule(cls, dm: Any) -> TaskInfo:
        return cls(
            name=dm.task_name,
            num_labels=dm.num_labels,
            metrics=tuple(dm.metrics),
            primary_metric=dm.primary_metric,
            test_split_names=tuple(dm.test_split_names),
        )


def model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The keys of a batch that an HF encoder takes (drops labels, example ids)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def agreement_key(split: str) -> str:
    return "fidelity/agreement" if split == "test" else f"fidelity/agreement@{split}"


class Technique(L.LightningModule):
    requires_teacher: ClassVar[bool] = False  # True: training uses the teacher's outputs
    needs_hidden_states: ClassVar[bool] = False  # forward passes return all hidden states
    needs_attentions: ClassVar[bool] = False  # forces eager attention (sdpa returns no attention maps)
    trains: ClassVar[bool] = True  # False: post-training technique, the runner calls compress()
    uses_teacher_logits_only: ClassVar[bool] = False  # True: teacher logits may come from a disk cache

    def __init__(
        self,
        student: PreTrainedModel,
        task: TaskInfo,
        teacher: PreTrainedModel | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if self.requires_teacher and teacher is None:
            raise ConfigError("teacher", None, f"technique {type(self).__name__} needs a teacher")
        self.student = student.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
        self.task = task
        self.optimizer_factory = optimizer
        self.lr_scheduler_cfg = dict(lr_scheduler or {})
        self._set_teacher(teacher)
        self.logit_cache: TeacherLogitCache | None = None  # attached by the runner when allowed
        self.val_metrics = metric_collection(task.metrics, task.num_labels, prefix="val/")
        self.test_metrics = nn.ModuleDict()
        for split in task.test_split_names:
            self.test_metrics[f"student_{split}"] = metric_collection(task.metrics, task.num_labels, f"{split}/")
            if teacher is not None:
                self.test_metrics[f"teacher_{split}"] = metric_collection(
                    task.metrics, task.num_labels, f"teacher/{split}/"
                )
                self.test_metrics[f"agreement_{split}"] = MeanMetric()
        self.prepare_student()

    # ----------------------------------------------------------------- teacher
    def _set_teacher(self, teacher: PreTrainedModel | None) -> None:
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)  # bypass nn.Module registration on purpose

    @property
    def teacher(self) -> PreTrainedModel | None:
        return self._teacher

    def _move_teacher(self) -> None:
        if self._teacher is not None:
            self._teacher.to(self.device).eval()

    def on_fit_start(self) -> None:
        self._move_teacher()

    def on_validation_start(self) -> None:
        self._move_teacher()

    def on_test_start(self) -> None:
        self._move_teacher()

    # ------------------------------------------------------------ forward passes
    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.student(**model_inputs(batch)).logits

    def student_outputs(self, batch: Mapping[str, Tensor]) -> SequenceClassifierOutput:
        return self.student(
            **model_inputs(batch),
            output_hidden_states=self.needs_hidden_states,
            output_attentions=self.needs_attentions,
        )

    @torch.no_grad()
    def teacher_outputs(self, batch: Mapping[str, Tensor]) -> SequenceClassifierOutput:
        """The teacher's forward pass; subclasses that only need logits may serve them from a cache."""
        out = self._teacher(
            **model_inputs(batch),
            output_hidden_states=self.needs_hidden_states,
            output_attentions=self.needs_attentions,
        )
        if self.needs_attentions and not out.attentions:
            raise RuntimeError("teacher returned no attention maps: load it with attn_implementation='eager'")
        return out

    def teacher_logits(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Teacher logits for a training batch, from the per-example cache when one is attached."""
        cache = self.logit_cache if self.training and "idx" in batch else None
        if cache is not None and (cached := cache.get(batch["idx"])) is not None:
            return cached.to(self.device)
        logits = self.teacher_outputs(batch).logits
        if cache is not None:
            cache.put(batch["idx"], logits)
        return logits

    def on_train_epoch_end(self) -> None:
        if self.logit_cache is not None:
            self.logit_cache.save_if_complete()

    # ------------------------------------------------------------ extension points
    @classmethod
    def hparam_signature(cls) -> dict[str, Any]:
        """Hyperparameter name -> constructor default (``inspect.Parameter.empty`` when required), read
        along the class hierarchy: subclasses pass ``**base`` upwards, so defaults live in one place."""
        params: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in RUNNER_ARGS:
                    params[p.name] = p.default
        return params

    @classmethod
    def check_hparams(cls, **given: Any) -> None:
        """Validate hyperparameters before any model is loaded or trained; the constructor's defaults
        fill in what is not given. Raises ConfigError."""
        defaults = {k: v for k, v in cls.hparam_signature().items() if v is not inspect.Parameter.empty}
        cls.validate_hparams(**{**defaults, **given})

    @classmethod
    def validate_hparams(cls, **hparams: Any) -> None:
        """Override to check a complete set of hyperparameters (no defaults: they come from __init__)."""

    @classmethod
    def stages(cls, **hparams: Any) -> list[Stage]:
        """The training phases this configuration runs. Default: one."""
        return [Stage("train")]

    def prepare_student(self) -> None:
        """Rewrite the student's modules once, before the optimizer sees them. Default: nothing."""

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} trains but defines no training_loss")

    def compress(self, datamodule: L.LightningDataModule) -> None:
        """A post-training technique's whole job (``trains = False``): calibrate, quantize, prune …"""
        raise NotImplementedError(f"{type(self).__name__} has trains=False but defines no compress()")

    def export_student(self) -> PreTrainedModel:
        """The model to measure and save. Default: the student as trained."""
        return self.student

    def trainable_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """Student parameters plus the technique's own (projections …); never the teacher's."""
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.training_loss(batch)
        if "loss" not in losses:
            raise KeyError(f"{type(self).__name__}.training_loss must return a 'loss' entry")
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        for name, value in losses.items():
            if name != "loss":
                self.log(name, value, batch_size=bs)
        return losses["loss"]

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("optim.optimizer", None, "a trainable technique needs an optimizer")
        decay, no_decay = [], []
        for name, param in self.trainable_parameters():
            # BERT recipe: no weight decay on biases and LayerNorm weights.
            (no_decay if param.ndim < 2 else decay).append(param)
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        optimizer = self.optimizer_factory(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if not self.lr_scheduler_cfg:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(
            self.lr_scheduler_cfg.get("name", "linear"),
            optimizer,
            num_warmup_steps=int(self.lr_scheduler_cfg.get("warmup_ratio", 0.0) * total),
            num_training_steps=total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        logits = self(batch)
        bs = batch["labels"].shape[0]
        self.log("val/loss", F.cross_entropy(logits, batch["labels"]), batch_size=bs)
        self.val_metrics.update(logits.argmax(-1), batch["labels"])
        self.log_dict(self.val_metrics, batch_size=bs, prog_bar=True)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.task.test_split_names[dataloader_idx]
        labels, bs = batch["labels"], batch["labels"].shape[0]
        pred_S = self(batch).argmax(-1)
        student = self.test_metrics[f"student_{split}"]
        student.update(pred_S, labels)
        self.log_dict(student, batch_size=bs, add_dataloader_idx=False)
        if self._teacher is None:
            return
        with torch.no_grad():
            pred_T = self._teacher(**model_inputs(batch)).logits.argmax(-1)
        teacher: MetricCollection = self.test_metrics[f"teacher_{split}"]
        teacher.update(pred_T, labels)
        self.log_dict(teacher, batch_size=bs, add_dataloader_idx=False)
        agreement = self.test_metrics[f"agreement_{split}"]
        agreement.update((pred_S == pred_T).float())
        self.log(agreement_key(split), agreement, batch_size=bs, add_dataloader_idx=False)
