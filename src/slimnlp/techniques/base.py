"""The base class every compression technique extends, and what a technique tells the runner.

A technique is a LightningModule that owns the student (a registered submodule: trained, checkpointed,
moved by Lightning) and holds the teacher *unregistered*: frozen, in eval mode, never in the optimizer,
never written into checkpoints, never wrapped by DDP. Subclasses write only what is their own idea:

- ``requirements(**hparams)`` (classmethod): what the runner must provide, read once before any model is
  loaded (a teacher, hidden states, cacheable teacher logits, extra teachers, DDP needs, training or not);
- ``check_models(models, **hparams)`` (classmethod): shape checks on the model *configs* (``ModelConfigs``), run by
  the runner before the teacher is fine-tuned, so an incompatible pair fails in seconds;
- ``training_loss(batch)``: the objective, as a dict with ``loss`` and named components;
- ``prepare_student()``: rewrite the student's modules once per stage, after the technique's own
  hyperparameters are set and before the optimizer sees them (masks, fake-quant, replacing);
- ``parameter_groups()``: extra optimizer groups with their own settings (pruning scores: own LR, no decay);
- ``compress(calibration)``: the whole job of a post-training technique (``Requirements(trains=False)``);
- ``export_student()``: the model that is measured and saved (materialized, quantized …); it must save and
  reload through ``slimnlp.artifacts`` (register a rebuilder for any module kind it introduces);
- ``compression_metrics()``: ``compress/*`` figures measured on that export (its real sparsity …);
- ``predict(batch)``: the student's predictions as evaluation reads them; a student whose depth varies per
  example (early exit) also says how many layers each example ran, logged as ``<split>/avg_exit_layer``.

Validation and test are shared: every technique is evaluated by the same code, which is what makes the
comparison between techniques fair.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import PretrainedConfig, PreTrainedModel, get_scheduler
from transformers.modeling_outputs import SequenceClassifierOutput

from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.metrics.classification import metric_collection
from slimnlp.metrics.fidelity import FIDELITY_METRICS
from slimnlp.models.loading import set_attention_implementation
from slimnlp.teacher_cache import TeacherLogitCache

# Constructor arguments the runner supplies; everything else a constructor takes is a hyperparameter.
RUNNER_ARGS = ("self", "student", "teacher", "task", "optimizer", "lr_scheduler")
OptimizerFactory = Callable[..., torch.optim.Optimizer]
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class Requirements:
    """What a technique needs from the runner, declared once per configuration (and stage)."""

    teacher: bool = False  # training reads the teacher's outputs (a teacher is evaluated either way)
    attention: str = "sdpa"  # attention kernel of student and teacher during training; eager for double backward
    hidden_states: bool = False  # forward passes return every layer's hidden states
    cacheable_teacher_logits: bool = False  # only teacher logits are read: they may come from the disk cache
    extra_teachers: bool = False  # the runner loads ``technique.teachers`` and passes the models as ``teachers``
    trains: bool = True  # False: post-training, the runner calls ``compress(calibration)`` instead of fitting
    find_unused_parameters: bool = False  # a step leaves trainable parameters unused (DDP must look for them)
    ddp: bool = True  # False: the technique cannot run in several processes (the runner refuses DDP)
    # False: task-agnostic (general distillation): the teacher is the pretrained model, not fine-tuned; the data is
    # unlabelled text (data=text_corpus); validation tracks the held-out loss; the student is saved as a plain HF
    # encoder (no head), not tested or measured on a task.
    task: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")

    @classmethod
    def union(cls, needs: Sequence[Requirements]) -> Requirements:
        """What a run of several stages needs overall (any stage's need is the run's need; the cache and DDP
        only where every stage allows them)."""
        if not needs:
            return cls()
        merged: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(n, f.name) for n in needs]
            if f.name == "attention":
                merged[f.name] = "eager" if "eager" in values else "sdpa"
            elif f.name in ("cacheable_teacher_logits", "ddp", "trains", "task"):
                merged[f.name] = all(values)
            else:
                merged[f.name] = any(values)
        return cls(**merged)


@dataclass(frozen=True)
class ModelConfigs:
    """The models a technique will work on, as configs (no weights): what ``check_models`` checks."""

    student: PretrainedConfig
    teacher: PretrainedConfig | None
    extra_teachers: tuple[PretrainedConfig, ...] = ()

    def require_same(self, key: str, why: str) -> None:
        """The student's config value ``key`` must be the teacher's (a width, a head count …); ``why`` says
        what compares them."""
        mine, theirs = getattr(self.student, key), getattr(self.teacher, key)
        if mine != theirs:
            raise ConfigError(f"student.{key}", mine, f"the teacher's {theirs!r}: {why}")


@dataclass(frozen=True)
class Stage:
    """One training phase of a technique; the runner runs a technique's stages in order, handing the
    student exported by one stage to the next (TinyBERT: intermediate → prediction layer). A stage owns its
    optimizer: it may set its own epochs, peak learning rate and LR schedule."""

    name: str
    hparams: Mapping[str, Any] = field(default_factory=dict)  # overrides of the technique's hyperparameters
    max_epochs: int | None = None  # None: trainer.max_epochs
    select_best: bool = True  # restore the best validation checkpoint at the end of the stage
    lr: float | None = None  # None: the run's optim.optimizer.lr
    lr_scheduler: Mapping[str, Any] | None = None  # keys overriding optim.lr_scheduler, e.g. {"name": "constant"}
    budget_share: float = 1.0  # this stage's share of a step budget (trainer.max_steps > 0) against the others'


@dataclass(frozen=True)
class TaskInfo:
    """What the shared evaluation needs to know about the task; read off the datamodule."""

    name: str
    num_labels: int
    metrics: tuple[str, ...] = ("acc", "f1")
    primary_metric: str = "acc"
    test_split_names: tuple[str, ...] = ("test",)
    primary_mode: str = "max"  # "min" where the validation metric is a loss (unlabelled text)

    @classmethod
    def from_datamodule(cls, dm: Any) -> TaskInfo:
        return cls(
            name=dm.task_name,
            num_labels=dm.num_labels,
            metrics=tuple(dm.metrics),
            primary_metric=dm.primary_metric,
            test_split_names=tuple(dm.test_split_names),
            primary_mode=getattr(dm, "primary_mode", "max"),
        )


@dataclass(frozen=True)
class Prediction:
    """A technique's predictions on one evaluation batch."""

    logits: Tensor  # [batch, num_labels]
    exit_layers: Tensor | None = None  # [batch] encoder layers each example ran (early exit); None: all of them


def fidelity_key(name: str, split: str) -> str:
    """``fidelity/<name>`` on the test split, ``fidelity/<name>@<split>`` on others (MNLI's test_mm …)."""
    return f"fidelity/{name}" if split == "test" else f"fidelity/{name}@{split}"



class Technique(L.LightningModule):
    # True: the exported student holds quantized weights, which no technique trains, prunes or quantizes again,
    # so a pipeline (slimnlp.pipeline) puts such a stage last.
    exports_quantized: ClassVar[bool] = False

    def __init__(
        self,
        student: PreTrainedModel,
        task: TaskInfo,
        teacher: PreTrainedModel | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # The subclass constructors' arguments (Lightning walks the __init__ frames), so that requirements()
        # and check_models() see the hyperparameters this instance was built with; kept in checkpoints too.
        self.save_hyperparameters(ignore=[*RUNNER_ARGS, "teachers"], logger=False)
        self.needs = type(self).requirements(**self.hparams)
        if self.needs.teacher and teacher is None:
            raise ConfigError("teacher", None, f"technique {type(self).__name__} needs a teacher")
        teacher_config = teacher.config if teacher is not None else None
        type(self).check_models(ModelConfigs(student.config, teacher_config), **self.hparams)
        self.student = student.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
        self.task = task
        self.optimizer_factory = optimizer
        self.lr_scheduler_cfg = dict(lr_scheduler or {})
        self._set_teacher(teacher)
        if self.needs.attention == "eager":
            for model in (student, teacher):
                if model is not None:
                    set_attention_implementation(model, "eager")
        self.logit_cache: TeacherLogitCache | None = None  # attached by the runner when allowed
        self.extra_logit_caches: list[TeacherLogitCache | None] = []
        self._prepared = False
        self.val_metrics = metric_collection(task.metrics, task.num_labels, prefix="val/")
        self.test_metrics = nn.ModuleDict()
        for split in task.test_split_names:
            self.test_metrics[f"student_{split}"] = metric_collection(task.metrics, task.num_labels, f"{split}/")
            if teacher is not None:
                self.test_metrics[f"teacher_{split}"] = metric_collection(
                    task.metrics, task.num_labels, f"teacher/{split}/"
                )
                for name, metric in FIDELITY_METRICS.items():
                    self.test_metrics[f"{name}_{split}"] = metric()

    # ----------------------------------------------------------------- teacher
    def _set_teacher(self, teacher: PreTrainedModel | None) -> None:
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)  # bypass nn.Module registration on purpose

    @property
    def teacher(self) -> PreTrainedModel | None:
        return self._teacher

    def frozen_models(self) -> list[nn.Module]:
        """Unregistered models this technique holds (the teacher, extra teachers …): moved to the device with
        the student and kept in eval mode. Override to add your own."""
        return [self._teacher] if self._teacher is not None else []

    def _move_frozen(self) -> None:
        for model in self.frozen_models():
            model.to(self.device).eval()

    def on_fit_start(self) -> None:
        self._move_frozen()

    def on_train_start(self) -> None:
        # Lightning #20550: configure_optimizers reads trainer.estimated_stepping_batches, which sets up the
        # train loader before a checkpoint is restored, so the loader's saved position is never loaded and a
        # mid-epoch resume replays the epoch from its start. Load it here and make the iterator again (the one
        # made at setup snapshot the loader before the restore), as the open fix (PR #21765) does.
        loop = self.trainer.fit_loop
        if loop.restarting and getattr(loop, "_combined_loader_states_to_load", None):
            loop._load_combined_loader_states()
            iter(loop._data_fetcher)

    def on_validation_start(self) -> None:
        self._move_frozen()

    def on_test_start(self) -> None:
        self._move_frozen()

    # ------------------------------------------------------------ forward passes
    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.student(**model_inputs(batch)).logits

    def student_outputs(self, batch: Mapping[str, Tensor]) -> SequenceClassifierOutput:
        return self.student(**model_inputs(batch), output_hidden_states=self.needs.hidden_states)

    @torch.no_grad()
    def teacher_outputs(self, batch: Mapping[str, Tensor]) -> SequenceClassifierOutput:
        """The teacher's forward pass; subclasses that only need logits may serve them from a cache."""
        return self._teacher(**model_inputs(batch), output_hidden_states=self.needs.hidden_states)

    def teacher_logits(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Teacher logits for a training batch, from the per-example cache when one is attached."""
        return self.cached_logits(self.logit_cache, self._teacher, batch)

    @torch.no_grad()
    def cached_logits(
        self, cache: TeacherLogitCache | None, model: nn.Module, batch: Mapping[str, Tensor]
    ) -> Tensor:
        """``model``'s logits on a training batch, served from (and filling) ``cache`` where there is one."""
        cache = cache if self.training and "idx" in batch else None
        if cache is not None and (cached := cache.get(batch["idx"])) is not None:
            return cached.to(self.device)
        logits = model(**model_inputs(batch)).logits
        if cache is not None:
            cache.put(batch["idx"], logits)
        return logits

    def attach_logit_caches(
        self, primary: TeacherLogitCache | None, extra: Sequence[TeacherLogitCache | None] = ()
    ) -> None:
        """Per-example logit caches: one for the teacher, one per extra teacher (in the order of ``teachers``).
        The runner attaches them only when ``requirements().cacheable_teacher_logits``."""
        self.logit_cache, self.extra_logit_caches = primary, list(extra)

    def on_train_epoch_end(self) -> None:
        if not self.trainer.is_global_zero:  # under DDP each rank sees a shard: only rank 0 ever writes
            return
        for cache in (self.logit_cache, *self.extra_logit_caches):
            if cache is not None:
                cache.save_if_complete()

    # ------------------------------------------------------------ extension points
    @classmethod
    def hparam_signature(cls) -> dict[str, Any]:
        """Hyperparameter name -> constructor default (``inspect.Parameter.empty`` when required).

        Read down the class hierarchy only as far as constructors forward ``**kwargs``: a parent's parameter
        is a hyperparameter of the child only if the child passes unknown keywords on to it, so a value a
        subclass fixes itself (and does not forward) can never be given from the config as well."""
        params: dict[str, Any] = {}
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            if klass is Technique or klass is object:
                break
            signature = inspect.signature(init).parameters.values()
            for p in signature:
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in RUNNER_ARGS:
                    params.setdefault(p.name, p.default)
            if not any(p.kind is p.VAR_KEYWORD for p in signature):
                break
        return params

    @classmethod
    def defaults_filled(cls, **given: Any) -> dict[str, Any]:
        """``given`` completed with the constructor defaults."""
        defaults = {k: v for k, v in cls.hparam_signature().items() if v is not inspect.Parameter.empty}
        return {**defaults, **given}

    @classmethod
    def check_hparams(cls, **given: Any) -> None:
        """Validate hyperparameters before any model is loaded or trained; the constructor's defaults
        fill in what is not given. Raises ConfigError."""
        cls.validate_hparams(**cls.defaults_filled(**given))

    @classmethod
    def validate_hparams(cls, **hparams: Any) -> None:
        """Override to check a complete set of hyperparameters (no defaults: they come from __init__)."""

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        """What this configuration needs from the runner (hparams complete, as in ``validate_hparams``).
        Default: a student trained on its own."""
        return Requirements()

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        """Check the technique against the model configs (no weights): head counts, widths, depths. The
        runner calls it before fine-tuning the teacher; the constructor calls it again on the real models.
        Raises ConfigError. Default: any pair of models works."""

    @classmethod
    def stages(cls, **hparams: Any) -> list[Stage]:
        """The training phases this configuration runs. Default: one."""
        return [Stage("train")]

    def setup(self, stage: str) -> None:
        self.prepare()

    def prepare(self) -> None:
        """Run ``prepare_student`` once (Lightning's ``setup`` calls this; the runner calls it before
        ``compress``), after the subclass constructor has set every hyperparameter."""
        if not self._prepared:
            self.prepare_student()
            self._prepared = True

    def prepare_student(self) -> None:
        """Rewrite the student's modules once, before the optimizer sees them. Default: nothing."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Extra optimizer parameter groups with their own settings, e.g. learned pruning scores with their own
        ``lr`` and ``weight_decay=0``. Their parameters are left out of the default groups. Default: none."""
        return []

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} trains but defines no training_loss")

    def compress(self, calibration: Iterable[Mapping[str, Tensor]]) -> Mapping[str, float] | None:
        """A post-training technique's whole job (``Requirements(trains=False)``): calibrate on batches of the
        training split (``calibration.num_samples`` examples, on this module's device; iterable more than
        once), then quantize, prune … the student in place. May return ``compress/*`` metrics for results."""
        raise NotImplementedError(f"{type(self).__name__} declares trains=False but defines no compress()")

    def export_student(self) -> PreTrainedModel:
        """The model to measure and save. Default: the student as trained."""
        return self.student

    def compression_metrics(self) -> Mapping[str, float]:
        """``compress/*`` metrics measured on the exported student (read after ``export_student``: the sparsity
        its weights really have, the heads it kept …), recorded in results. Default: none."""
        return {}

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
        extra = self.parameter_groups()
        claimed = {id(p) for group in extra for p in group["params"]}
        decay, no_decay = [], []
        for _, param in self.trainable_parameters():
            if id(param) not in claimed:  # BERT recipe: no weight decay on biases and LayerNorm weights
                (no_decay if param.ndim < 2 else decay).append(param)
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        optimizer = self.optimizer_factory(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}, *extra]
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
    def predict(self, batch: Mapping[str, Tensor]) -> Prediction:
        """The student's predictions on an evaluation batch. Override when the student reports more than
        logits (an early-exit student: the layers each example ran)."""
        return Prediction(self(batch))

    def _log_exit_layers(self, prediction: Prediction, split: str, bs: int) -> None:
        if prediction.exit_layers is not None:  # a per-example mean: Lightning weights each batch by its size
            self.log(f"{split}/avg_exit_layer", prediction.exit_layers.float().mean(), batch_size=bs,
                     add_dataloader_idx=False)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        prediction = self.predict(batch)
        logits = prediction.logits
        bs = batch["labels"].shape[0]
        self.log("val/loss", F.cross_entropy(logits, batch["labels"]), batch_size=bs)
        self.val_metrics.update(logits.argmax(-1), batch["labels"])
        self.log_dict(self.val_metrics, batch_size=bs, prog_bar=True)
        self._log_exit_layers(prediction, "val", bs)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.task.test_split_names[dataloader_idx]
        labels, bs = batch["labels"], batch["labels"].shape[0]
        prediction = self.predict(batch)
        logits_S = prediction.logits
        student = self.test_metrics[f"student_{split}"]
        student.update(logits_S.argmax(-1), labels)
        self.log_dict(student, batch_size=bs, add_dataloader_idx=False)
        self._log_exit_layers(prediction, split, bs)
        if self._teacher is None:
            return
        with torch.no_grad():
            logits_T = self._teacher(**model_inputs(batch)).logits
        teacher: MetricCollection = self.test_metrics[f"teacher_{split}"]
        teacher.update(logits_T.argmax(-1), labels)
        self.log_dict(teacher, batch_size=bs, add_dataloader_idx=False)
        for name in FIDELITY_METRICS:
            metric = self.test_metrics[f"{name}_{split}"]
            metric.update(logits_T, logits_S)
            self.log(fidelity_key(name, split), metric, batch_size=bs, add_dataloader_idx=False)
