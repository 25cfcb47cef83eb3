"""MetaDistil: the teacher learns to teach from the student's results on a quiz, as the released code does it.

Zhou, Xu & McAuley 2022 (ACL), "BERT Learns to Teach: Knowledge Distillation with Meta Learning"; the
reference is the authors' code, JetRunner/MetaDistil: ``nlp/run_glue_distillation_meta.py`` (training loop,
defaults) and ``nlp/distillation_meta.py`` (losses). The student's objective is patient KD from a teacher
with weights ``w`` (slimnlp's ``alpha`` weighs the hard-label CE, as in ``technique=kd``/``pkd``; the
released ``--alpha`` weighs the soft loss, so ``alpha = 1 − α_released``, 0.5 either way)::

    L_S(x; θ, w) = alpha·CE(z_S, y) + (1 − alpha)·L_soft + beta·L_PKD
    L_soft = T² · mean_{i,c} (softmax(z_T/T) − softmax(z_S/T))²        (soft_loss=prob_mse, the released one)
    L_PKD  = mean_{j,i,h} (h_S,j/‖h_S,j‖ − h_T,j/‖h_T,j‖)²            ([CLS] of matched layers)

Both are ``F.mse_loss`` means over every element, as released (``slimnlp.losses.metadistil``), so the
released β = 100 applies unchanged. PKD pairs the student's layers 1..M−1 with teacher layers chosen by
``--select skip`` (default: ``every = N // M``; teacher layers ``every, 2·every, …``, 1-based) or ``last``
(the M−1 layers below the teacher's top). ``beta=0`` skips the term (as released).

Every training batch is one meta round (``--num_meta_batches 1``, the released default):

1. pilot: a functional copy of the student takes one SGD step on ``L_S``,
   ``θ'(w) = θ − λ·∇_θ L_S(x; θ, w)``, keeping the graph so ``θ'`` stays a function of the teacher's
   weights (student in train mode, teacher in eval mode, both with gradients);
2. teacher step: the pilot student's CE on the quiz set (eval mode: no dropout),
   ``L_T(w) = CE(z_S(q; θ'(w)), y_q)``, is backpropagated through the pilot into ``w`` (second order),
   the gradient is clipped to norm 1 and the teacher's AdamW steps (linear schedule like the student's);
3. real step: the student takes its optimizer step on ``L_S`` against the *updated* teacher (no grad).

Quiz set. Released: a separate labelled file (``held.tsv``; the code's comment says the GLUE dev set was
used "for simplicity"), and every round the quiz loss averages *all* of it (``--num_held_batches 0``, the
default), or ``K`` batches drawn with replacement (``--num_held_batches K``), in batches of the training
batch size. Here (``quiz_source``):

- ``train`` (default, the paper's held-out quiz): the examples of the training split whose ``idx`` falls in
  a fixed hash bucket of share ``quiz_fraction`` are the quiz set; they are dropped from the student's
  batches, so **the student trains on fewer examples** than under other techniques;
- ``validation``: the validation split is the quiz set (what the released NLP code ran) and the student
  trains on every training example, for comparisons at the same number of student training examples. The
  teacher then learns from validation labels, so the best-checkpoint choice on validation is optimistic;
  the test split stays unseen.

``quiz_batches=null`` averages the whole quiz set every step (released default); its cost per step grows
with the quiz set, so on large data ``quiz_batches=K`` (the released ``--num_held_batches K``) draws K batches
of ``quiz_batch_size`` with replacement per step (seeded per step). The quiz loss is the mean over the
quiz examples of the step (the released code averages per-batch means, which differs only in a last,
partial batch). results.json records ``train/student_examples``, ``train/quiz_examples`` and
``train/quiz_batches_per_step``.

Released defaults (``run_glue_distillation_meta.py`` argparse): temperature 5, alpha 0.5, beta 100 (also the
README's), teacher learning rate 1e-5, pilot step size ``--assume_s_step_size`` 5e-5, ``--max_grad_norm``
1.0 for the teacher's and the student's gradients, teacher weight decay ``--weight_decay`` 0.

The trained teacher is a deep copy owned by the technique (``meta_teacher``: registered, trainable,
checkpointed with its optimizer state); the runner's frozen teacher is untouched and is still what
evaluation and fidelity compare against. The student's optimizer is the run's (automatic optimization);
the teacher's AdamW is the technique's own and steps once per training batch. The student runs with eager
attention (the double backward has no fused sdpa kernel). Not supported: DDP (the teacher copy's
gradients, taken with ``autograd.grad``, would never be reduced), ``--num_meta_batches`` > 1.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from transformers import get_scheduler

from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.losses.kd import kd_kl, logits_mse
from slimnlp.losses.metadistil import normalized_cls_mse, softmax_mse
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights

log = logging.getLogger(__name__)

TEACHER_OPTIM_KEY = "meta_kd_teacher_optimizer"
QUIZ_SOURCES = ("train", "validation")
SOFT_LOSSES = ("prob_mse", "logits_mse", "kl")
PKD_LAYERS = ("skip", "last")
_HASH = 0x9E3779B1  # Fibonacci hashing: consecutive ids spread evenly over [0, 2^32)


def is_quiz(idx: Tensor, fraction: float) -> Tensor:
    """Whether each example id belongs to the held-out quiz set (deterministic, ~``fraction`` of ids)."""
    return ((idx.long() * _HASH) % 2**32).double() / 2**32 < fraction


def pkd_layer_order(num_student: int, num_teacher: int, select: str) -> list[int]:
    """Teacher layer (0-based) matched to each of the student's first ``num_student − 1`` layers, as the
    released ``--select``: ``skip`` takes every ``N // M``-th teacher layer (12→6: 1-based 2, 4, 6, 8, 10),
    ``last`` the ``M − 1`` layers below the top (12→6: 7…11)."""
    below_top = list(range(num_teacher - 1))
    if select == "skip":
        every = num_teacher // num_student
        return below_top[every - 1 :: every][: num_student - 1]
    if select == "last":
        return below_top[-(num_student - 1) :] if num_student > 1 else []
    raise ConfigError("technique.pkd_layers", select, f"one of {', '.join(PKD_LAYERS)}")


def _to(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in dict(batch).items()}


def _select(batch: Mapping[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    return {k: v[rows] for k, v in batch.items()}


class QuizSet:
    """The fixed quiz examples, served per step as the whole set in order or ``k`` batches drawn with
    replacement."""

    def __init__(self, rows: Sequence[Mapping[str, Tensor]], collate: Callable[[list], Any], batch_size: int):
        if not rows:
            raise ValueError("a quiz set needs at least one example")
        self.rows, self.collate, self.batch_size = list(rows), collate, int(batch_size)
        self._whole: tuple[torch.device, list[dict[str, Tensor]]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def batches_per_step(self, num_batches: int | None) -> int:
        return num_batches if num_batches is not None else math.ceil(len(self) / self.batch_size)

    def _collate(self, picks: Sequence[int], device: torch.device) -> list[dict[str, Tensor]]:
        bs = self.batch_size
        return [
            _to(self.collate([self.rows[j] for j in picks[i : i + bs]]), device)
            for i in range(0, len(picks), bs)
        ]

    def batches(
        self, num_batches: int | None, device: torch.device, generator: torch.Generator | None = None
    ) -> list[dict[str, Tensor]]:
        if num_batches is None:  # the same batches every step: collated and moved once
            if self._whole is None or self._whole[0] != device:
                self._whole = (device, self._collate(range(len(self)), device))
            return self._whole[1]
        picks = torch.randint(len(self), (num_batches * self.batch_size,), generator=generator).tolist()
        return self._collate(picks, device)


def _check_optional_count(key: str, value: Any, meaning: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(key, value, f"null ({meaning}) or an integer >= 1")


class MetaDistil(Technique):
    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 5.0,
        beta: float = 100.0,
        soft_loss: str = "prob_mse",
        pkd_layers: str = "skip",
        teacher_lr: float = 1e-5,
        pilot_lr: float | None = 5e-5,
        quiz_source: str = "train",
        quiz_fraction: float = 0.1,
        quiz_batches: int | None = None,
        quiz_batch_size: int | None = None,
        teacher_max_grad_norm: float = 1.0,
        **base: Any,
    ) -> None:
        self.validate_hparams(
            alpha=alpha,
            temperature=temperature,
            beta=beta,
            soft_loss=soft_loss,
            pkd_layers=pkd_layers,
            teacher_lr=teacher_lr,
            pilot_lr=pilot_lr,
            quiz_source=quiz_source,
            quiz_fraction=quiz_fraction,
            quiz_batches=quiz_batches,
            quiz_batch_size=quiz_batch_size,
            teacher_max_grad_norm=teacher_max_grad_norm,
        )
        super().__init__(**base)
        self.alpha, self.temperature, self.beta, self.soft_loss = alpha, temperature, beta, soft_loss
        self.teacher_lr, self.pilot_lr = teacher_lr, pilot_lr
        self.teacher_max_grad_norm = teacher_max_grad_norm
        self.quiz_source, self.quiz_fraction = quiz_source, quiz_fraction
        self.quiz_batches, self.quiz_batch_size = quiz_batches, quiz_batch_size
        self.layer_order = (
            pkd_layer_order(
                self.student.config.num_hidden_layers, self.teacher.config.num_hidden_layers, pkd_layers
            )
            if beta > 0
            else []
        )
        # The trained teacher: a registered copy; the runner's teacher object is never written to.
        self.meta_teacher = copy.deepcopy(self.teacher).eval().requires_grad_(True)
        self.quiz: QuizSet | None = None
        self.student_examples: int | None = None  # training examples the student's updates use
        self.quiz_seed = 0
        self.teacher_optimizer: torch.optim.Optimizer | None = None
        self.teacher_scheduler: Any = None
        self._pending_teacher_state: dict[str, Any] | None = None

    @classmethod
    def validate_hparams(
        cls,
        alpha: float,
        temperature: float,
        beta: float,
        soft_loss: str,
        pkd_layers: str,
        teacher_lr: float,
        pilot_lr: float | None,
        quiz_source: str,
        quiz_fraction: float,
        quiz_batches: int | None,
        quiz_batch_size: int | None,
        teacher_max_grad_norm: float,
        **_: Any,
    ) -> None:
        check_kd_weights(alpha, temperature)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ConfigError("technique.beta", beta, "the weight of the patient (PKD) loss, >= 0")
        if alpha == 1.0 and beta == 0:
            raise ConfigError(
                "technique.alpha",
                alpha,
                "< 1 (or technique.beta > 0): with no teacher term the teacher cannot teach",
            )
        if soft_loss not in SOFT_LOSSES:
            raise ConfigError("technique.soft_loss", soft_loss, f"one of {', '.join(SOFT_LOSSES)}")
        if pkd_layers not in PKD_LAYERS:
            raise ConfigError("technique.pkd_layers", pkd_layers, f"one of {', '.join(PKD_LAYERS)}")
        if not teacher_lr > 0:
            raise ConfigError("technique.teacher_lr", teacher_lr, "the teacher's learning rate must be > 0")
        if pilot_lr is not None and not pilot_lr > 0:
            raise ConfigError(
                "technique.pilot_lr", pilot_lr, "null (the student's base learning rate) or > 0"
            )
        if quiz_source not in QUIZ_SOURCES:
            raise ConfigError("technique.quiz_source", quiz_source, f"one of {', '.join(QUIZ_SOURCES)}")
        if (
            isinstance(quiz_fraction, bool)
            or not isinstance(quiz_fraction, (int, float))
            or not 0 < quiz_fraction < 1
        ):
            raise ConfigError(
                "technique.quiz_fraction", quiz_fraction, "the held-out share of training examples, in (0, 1)"
            )
        _check_optional_count("technique.quiz_batches", quiz_batches, "the whole quiz set every step")
        _check_optional_count("technique.quiz_batch_size", quiz_batch_size, "data.batch_size")
        if not teacher_max_grad_norm > 0:
            raise ConfigError("technique.teacher_max_grad_norm", teacher_max_grad_norm, "> 0")

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        # The teacher changes every step (no logit cache). The pilot update differentiates through the
        # student's backward pass: torch's fused sdpa kernels have no double backward, eager attention has.
        # The teacher copy's gradients are taken with autograd.grad, which DDP would never reduce.
        beta = cls.defaults_filled(**hparams)["beta"]
        return Requirements(teacher=True, attention="eager", hidden_states=beta > 0, ddp=False)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        if not cls.defaults_filled(**hparams)["beta"] > 0:
            return
        models.require_same("hidden_size", "the PKD term (technique.beta > 0) compares [CLS] states directly")
        num_S, num_T = models.student.num_hidden_layers, models.teacher.num_hidden_layers
        if not 2 <= num_S <= num_T:
            raise ConfigError(
                "student.num_layers",
                num_S,
                f"2..{num_T} for the PKD term (technique.beta > 0; the last student layer has no pair), or beta=0",
            )

    # ------------------------------------------------------------------ quiz set
    def attach_quiz(self, datamodule: Any) -> None:
        """Build the quiz set from a datamodule's splits (``datasets``, ``collate``, ``batch_size``)."""
        train = datamodule.datasets["train"]
        if self.quiz_source == "validation":
            rows = [
                datamodule.datasets["validation"][i] for i in range(len(datamodule.datasets["validation"]))
            ]
            self.student_examples = len(train)
        else:
            ids = torch.tensor([int(i) for i in train.with_format(None)["idx"]])
            held = is_quiz(ids, self.quiz_fraction).nonzero().flatten().tolist()
            if not held or len(held) == len(train):
                raise ConfigError(
                    "technique.quiz_fraction",
                    self.quiz_fraction,
                    f"a share that holds out some but not all of the {len(train)} training examples "
                    f"(it holds out {len(held)}); or technique.quiz_source=validation",
                )
            rows = [train[i] for i in held]
            self.student_examples = len(train) - len(rows)
        self.quiz = QuizSet(rows, datamodule.collate, self.quiz_batch_size or datamodule.batch_size)
        self.quiz_seed = torch.initial_seed()
        log.info(
            "meta_kd: quiz set = %d examples of the %s split (%d batches of %d per step); the student trains "
            "on %d of the %d training examples",
            len(self.quiz),
            self.quiz_source,
            self.quiz.batches_per_step(self.quiz_batches),
            self.quiz.batch_size,
            self.student_examples,
            len(train),
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.quiz is None:
            datamodule = self.trainer.datamodule
            if datamodule is None:
                raise RuntimeError(
                    "meta_kd builds its quiz set from the datamodule: fit with datamodule=, or "
                    "call attach_quiz() first"
                )
            self.attach_quiz(datamodule)

    def compression_metrics(self) -> Mapping[str, float]:
        if self.quiz is None:
            return dict(super().compression_metrics())
        return {
            **super().compression_metrics(),
            "train/student_examples": float(self.student_examples),
            "train/quiz_examples": float(len(self.quiz)),
            "train/quiz_batches_per_step": float(self.quiz.batches_per_step(self.quiz_batches)),
        }

    def quiz_for_step(self, batch_idx: int) -> list[dict[str, Tensor]]:
        """This step's quiz batches: the whole set, or ``quiz_batches`` drawn with replacement (seeded by the
        run seed, epoch and batch, so a resumed run draws the same)."""
        if self.quiz is None:
            raise RuntimeError("meta_kd: no quiz set (it is built at fit setup, or by attach_quiz())")
        generator = None
        if self.quiz_batches is not None:
            generator = torch.Generator().manual_seed(
                hash((self.quiz_seed, self.current_epoch, batch_idx)) % 2**63
            )
        return self.quiz.batches(self.quiz_batches, self.device, generator)

    # ------------------------------------------------------------------ optimizers
    def trainable_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in super().trainable_parameters() if not n.startswith("meta_teacher."))

    def configure_optimizers(self) -> Any:
        student = super().configure_optimizers()
        # AdamW without weight decay (the released --weight_decay default 0); the student's schedule shape.
        self.teacher_optimizer = torch.optim.AdamW(
            self.meta_teacher.parameters(), lr=self.teacher_lr, weight_decay=0.0
        )
        if self.lr_scheduler_cfg:
            total = int(self.trainer.estimated_stepping_batches)
            self.teacher_scheduler = get_scheduler(
                self.lr_scheduler_cfg.get("name", "linear"),
                self.teacher_optimizer,
                num_warmup_steps=int(self.lr_scheduler_cfg.get("warmup_ratio", 0.0) * total),
                num_training_steps=total,
            )
        if self._pending_teacher_state is not None:
            self.teacher_optimizer.load_state_dict(self._pending_teacher_state["optimizer"])
            if self.teacher_scheduler is not None and self._pending_teacher_state.get("scheduler"):
                self.teacher_scheduler.load_state_dict(self._pending_teacher_state["scheduler"])
            self._pending_teacher_state = None
        return student

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher_optimizer is not None:
            checkpoint[TEACHER_OPTIM_KEY] = {
                "optimizer": self.teacher_optimizer.state_dict(),
                "scheduler": self.teacher_scheduler.state_dict()
                if self.teacher_scheduler is not None
                else None,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_teacher_state = checkpoint.get(TEACHER_OPTIM_KEY)

    def pilot_step_size(self) -> float:
        if self.pilot_lr is not None:
            return self.pilot_lr
        group = self.trainer.optimizers[0].param_groups[0]
        return float(group.get("initial_lr", group["lr"]))

    # ------------------------------------------------------------------ objective
    def _outputs(
        self, model: nn.Module, batch: Mapping[str, Tensor], params: Mapping[str, Tensor] | None = None
    ):
        kwargs = {**model_inputs(batch), "output_hidden_states": self.beta > 0}
        return (
            model(**kwargs)
            if params is None
            else functional_call(model, dict(params), args=(), kwargs=kwargs)
        )

    def soft(self, logits_S: Tensor, logits_T: Tensor) -> Tensor:
        if self.soft_loss == "prob_mse":
            return softmax_mse(logits_S, logits_T, self.temperature)
        if self.soft_loss == "logits_mse":
            return logits_mse(logits_S, logits_T)
        return kd_kl(logits_S, logits_T, self.temperature)

    def objective(self, out_S: Any, out_T: Any, labels: Tensor) -> dict[str, Tensor]:
        """``alpha·CE + (1 − alpha)·L_soft + beta·L_PKD`` and its parts (gradients reach the teacher where its
        outputs carry them)."""
        ce = F.cross_entropy(out_S.logits, labels)
        soft = self.soft(out_S.logits, out_T.logits)
        loss = self.alpha * ce + (1.0 - self.alpha) * soft
        parts = {"loss/ce": ce, "loss/soft": soft}
        if self.beta > 0:
            # hidden_states[0] is the embedding output, so encoder layer i is hidden_states[i + 1]
            cls_S = [out_S.hidden_states[s + 1][:, 0] for s in range(len(self.layer_order))]
            cls_T = [out_T.hidden_states[t + 1][:, 0] for t in self.layer_order]
            pkd = normalized_cls_mse(cls_S, cls_T)
            loss = loss + self.beta * pkd
            parts["loss/pkd"] = pkd
        return {"loss": loss, **parts}

    def pilot_weights(self, train: Mapping[str, Tensor], step_size: float) -> dict[str, Tensor]:
        """``θ'(w) = θ − λ·∇_θ L_S(x; θ, w)``: differentiable in the teacher's weights ``w``."""
        params = {n: p for n, p in self.student.named_parameters() if p.requires_grad}
        out_T = self._outputs(self.meta_teacher, train)  # with grad: w enters the pilot loss here
        pilot = self.objective(self._outputs(self.student, train), out_T, train["labels"])["loss"]
        grads = torch.autograd.grad(pilot, list(params.values()), create_graph=True, allow_unused=True)
        return {n: p if g is None else p - step_size * g for (n, p), g in zip(params.items(), grads)}

    def quiz_gradient(
        self, fast: Mapping[str, Tensor], quiz: Sequence[Mapping[str, Tensor]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The pilot student's mean CE over every quiz example of ``quiz`` (eval mode) and its gradient with
        respect to the pilot weights, one batch at a time (each batch's graph is freed before the next)."""
        leaves = {n: w.detach().requires_grad_(True) for n, w in fast.items()}
        total = sum(int(b["labels"].shape[0]) for b in quiz)
        grads = {n: torch.zeros_like(w) for n, w in leaves.items()}
        loss: Tensor | float = 0.0
        was_training = self.student.training
        self.student.eval()
        try:
            for batch in quiz:
                logits = functional_call(self.student, leaves, args=(), kwargs=model_inputs(batch)).logits
                part = F.cross_entropy(logits, batch["labels"], reduction="sum") / total
                for (n, _), g in zip(
                    leaves.items(), torch.autograd.grad(part, list(leaves.values()), allow_unused=True)
                ):
                    if g is not None:
                        grads[n] += g
                loss = loss + part.detach()
        finally:
            self.student.train(was_training)
        return torch.as_tensor(loss, device=self.device), grads

    def teacher_gradient(
        self, train: Mapping[str, Tensor], quiz: Sequence[Mapping[str, Tensor]], step_size: float
    ) -> tuple[Tensor, list[Tensor | None]]:
        """Steps 1–2's gradient: ``∂L_T/∂w = Σ_n (∂L_T/∂θ'_n)ᵀ ∂θ'_n/∂w`` (the chain rule through the pilot)."""
        fast = self.pilot_weights(train, step_size)
        loss, grads_fast = self.quiz_gradient(fast, quiz)
        through = [n for n, w in fast.items() if w.grad_fn is not None]
        params = list(self.meta_teacher.parameters())
        if not through:
            return loss, [None] * len(params)
        grads = torch.autograd.grad(
            [fast[n] for n in through],
            params,
            grad_outputs=[grads_fast[n] for n in through],
            allow_unused=True,
        )
        return loss, list(grads)

    def teacher_step(self, train: Mapping[str, Tensor], quiz: Sequence[Mapping[str, Tensor]]) -> Tensor:
        """Steps 1–2 of the meta round: pilot update, then one teacher step on the pilot's quiz loss."""
        if self.teacher_optimizer is None:
            raise RuntimeError(
                "meta_kd: the teacher optimizer is created in configure_optimizers (run under a Trainer)"
            )
        self.meta_teacher.eval()
        quiz_loss, grads = self.teacher_gradient(train, quiz, self.pilot_step_size())
        params = list(self.meta_teacher.parameters())
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.detach()
        torch.nn.utils.clip_grad_norm_(params, self.teacher_max_grad_norm)
        self.teacher_optimizer.step()
        self.teacher_optimizer.zero_grad(set_to_none=True)
        if self.teacher_scheduler is not None:
            self.teacher_scheduler.step()
        return quiz_loss

    def student_rows(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """Which rows of a training batch the student trains on: None (all) unless the quiz set is held out
        of the training split."""
        if self.quiz_source != "train":
            return None
        if "idx" not in batch:
            raise KeyError(
                "meta_kd holds its quiz set out of the training split by example id: batches need 'idx'"
            )
        return ~is_quiz(batch["idx"], self.quiz_fraction).to(batch["input_ids"].device)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        rows = self.student_rows(batch)
        train = dict(batch)
        if rows is not None:
            if not bool(rows.any()):  # only quiz examples in this batch: nothing to train on
                return None  # (Lightning skips the step)
            if not bool(rows.all()):
                train = _select(batch, rows)
        quiz = self.quiz_for_step(batch_idx)
        quiz_loss = self.teacher_step(train, quiz)
        self.log("loss/quiz", quiz_loss, batch_size=sum(int(b["labels"].shape[0]) for b in quiz))
        return super().training_step(train, batch_idx)

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Step 3: the student's objective against the teacher as just updated (no gradient to it)."""
        self.meta_teacher.eval()
        with torch.no_grad():
            out_T = self._outputs(self.meta_teacher, batch)
        return self.objective(self._outputs(self.student, batch), out_T, batch["labels"])
