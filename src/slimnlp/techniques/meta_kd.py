"""MetaDistil: the teacher learns to teach from the student's results on a quiz.

Zhou, Xu & McAuley 2022 (ACL), "BERT Learns to Teach: Knowledge Distillation with Meta Learning". The
student's objective is ordinary KD from a teacher with weights ``w``::

    L_S(x; θ, w) = α·CE(z_S(x; θ), y) + (1−α)·τ²·KL(p_T^τ(x; w) ‖ p_S^τ(x; θ))

but ``w`` is trained too, by a *pilot update* every step (paper Algorithm 1):

1. pilot: a functional copy of the student takes one SGD step on the KD loss,
   ``θ'(w) = θ − λ·∇_θ L_S(x; θ, w)``, keeping the graph (``create_graph=True``) so ``θ'`` stays a
   differentiable function of the teacher's weights;
2. teacher step: the pilot student's cross-entropy on a held-out *quiz* batch ``q``,
   ``L_T(w) = CE(z_S(q; θ'(w)), y_q)``, is backpropagated through the pilot step into ``w`` (a
   second-order gradient, ``∂²L_S/∂θ∂w``) and the teacher takes an AdamW step;
3. real step: the student takes its normal optimizer step on ``L_S`` with the *updated* teacher.

As in the released code (JetRunner/MetaDistil), the pilot step size ``λ`` is the student's base learning
rate (not the scheduled one), the pilot runs the student in train mode and the quiz in eval mode, the
teacher runs in eval mode throughout, and its gradient is clipped to norm 1 before the step. The student
runs with eager attention: the second-order gradient needs a double backward that the fused sdpa kernels
do not implement.

Quiz data. The paper holds a quiz set out of the training data; the released code reads it from a separate
file. slimnlp cannot change the DataModule, so the quiz set is carved out of the training split by example
id: the examples whose ``idx`` falls in a fixed hash bucket of size ``quiz_fraction`` are never used for the
student's updates, only as quiz questions. As they go by in the training batches they fill a FIFO buffer
of the latest ``quiz_size`` such examples; the quiz batch of each step is the whole buffer (so early steps
have smaller quizzes). Batches therefore need the DataModule's ``idx``.

The teacher trained here is a deep copy owned by the technique (``meta_teacher``: registered, trainable,
checkpointed with its optimizer state); the runner's frozen teacher is untouched and is still what
evaluation and fidelity compare against. The student's optimizer is the run's (automatic optimization, so
gradient clipping and accumulation behave as for every technique); the teacher's AdamW is the technique's
own and steps once per training batch. Not supported: DDP (the teacher copy would be wrapped and its
gradients, taken with ``autograd.grad``, never reduced).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from transformers import get_scheduler

from slimnlp.batch import MODEL_INPUTS, model_inputs
from slimnlp.errors import ConfigError
from slimnlp.losses.kd import kd_kl
from slimnlp.techniques.base import Requirements, Technique
from slimnlp.techniques.kd import check_kd_weights

TEACHER_OPTIM_KEY = "meta_kd_teacher_optimizer"
_HASH = 0x9E3779B1  # Fibonacci hashing: consecutive ids spread evenly over [0, 2^32)


def is_quiz(idx: Tensor, fraction: float) -> Tensor:
    """Whether each example id belongs to the held-out quiz set (deterministic, ~``fraction`` of ids)."""
    return ((idx.long() * _HASH) % 2**32).double() / 2**32 < fraction


class QuizBuffer:
    """The latest ``size`` quiz examples, collated into one right-padded batch on demand."""

    def __init__(self, size: int, pad_token_id: int) -> None:
        self.rows: deque[dict[str, Tensor]] = deque(maxlen=size)
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, batch: Mapping[str, Tensor], rows: Tensor) -> None:
        for r in rows.nonzero().flatten().tolist():
            self.rows.append({k: batch[k][r].detach() for k in (*MODEL_INPUTS, "labels") if k in batch})

    def batch(self) -> dict[str, Tensor]:
        length = max(row["input_ids"].shape[0] for row in self.rows)
        out: dict[str, Tensor] = {"labels": torch.stack([row["labels"] for row in self.rows])}
        for key in MODEL_INPUTS:
            if key in self.rows[0]:
                pad = self.pad_token_id if key == "input_ids" else 0
                out[key] = torch.stack(
                    [F.pad(row[key], (0, length - row[key].shape[0]), value=pad) for row in self.rows]
                )
        return out


def _select(batch: Mapping[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    return {k: v[rows] for k, v in batch.items()}


class MetaDistil(Technique):
    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 5.0,
        teacher_lr: float = 1e-5,
        pilot_lr: float | None = None,
        quiz_fraction: float = 0.1,
        quiz_size: int = 32,
        teacher_max_grad_norm: float = 1.0,
        **base: Any,
    ) -> None:
        self.validate_hparams(
            alpha=alpha,
            temperature=temperature,
            teacher_lr=teacher_lr,
            pilot_lr=pilot_lr,
            quiz_fraction=quiz_fraction,
            quiz_size=quiz_size,
            teacher_max_grad_norm=teacher_max_grad_norm,
        )
        super().__init__(**base)
        self.alpha, self.temperature = alpha, temperature
        self.teacher_lr, self.pilot_lr = teacher_lr, pilot_lr
        self.quiz_fraction, self.teacher_max_grad_norm = quiz_fraction, teacher_max_grad_norm
        # The trained teacher: a registered copy; the runner's teacher object is never written to.
        self.meta_teacher = copy.deepcopy(self.teacher).eval().requires_grad_(True)
        self.quiz = QuizBuffer(quiz_size, self.student.config.pad_token_id or 0)
        self.teacher_optimizer: torch.optim.Optimizer | None = None
        self.teacher_scheduler: Any = None
        self._pending_teacher_state: dict[str, Any] | None = None

    @classmethod
    def validate_hparams(
        cls,
        alpha: float,
        temperature: float,
        teacher_lr: float,
        pilot_lr: float | None,
        quiz_fraction: float,
        quiz_size: int,
        teacher_max_grad_norm: float,
        **_: Any,
    ) -> None:
        check_kd_weights(alpha, temperature)
        if alpha == 1.0:
            raise ConfigError(
                "technique.alpha", alpha, "< 1: with no soft loss the teacher cannot influence the student"
            )
        if not teacher_lr > 0:
            raise ConfigError("technique.teacher_lr", teacher_lr, "the teacher's learning rate must be > 0")
        if pilot_lr is not None and not pilot_lr > 0:
            raise ConfigError(
                "technique.pilot_lr", pilot_lr, "null (the student's base learning rate) or > 0"
            )
        if not 0.0 < quiz_fraction < 1.0:
            raise ConfigError(
                "technique.quiz_fraction", quiz_fraction, "the held-out share of training examples, in (0, 1)"
            )
        if isinstance(quiz_size, bool) or not isinstance(quiz_size, int) or quiz_size < 1:
            raise ConfigError("technique.quiz_size", quiz_size, "an integer >= 1 (examples per quiz batch)")
        if not teacher_max_grad_norm > 0:
            raise ConfigError("technique.teacher_max_grad_norm", teacher_max_grad_norm, "> 0")

    @classmethod
    def requirements(cls, **hparams: Any) -> Requirements:
        # The teacher changes every step (no logit cache). The pilot update differentiates through the
        # student's backward pass: torch's fused sdpa kernels have no double backward
        # (``..._flash_attention_for_cpu_backward``), eager attention has. The teacher copy's gradients are
        # taken with autograd.grad, which DDP would never reduce across processes.
        return Requirements(teacher=True, attention="eager", ddp=False)

    # ------------------------------------------------------------------ optimizers
    def trainable_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in super().trainable_parameters() if not n.startswith("meta_teacher."))

    def configure_optimizers(self) -> Any:
        student = super().configure_optimizers()
        # AdamW without weight decay, as in the released code; the same schedule shape as the student's.
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
    def kd_objective(
        self, logits_S: Tensor, logits_T: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        ce = F.cross_entropy(logits_S, labels)
        kd = kd_kl(logits_S, logits_T, self.temperature)
        return self.alpha * ce + (1 - self.alpha) * kd, ce, kd

    def quiz_loss_after_pilot(
        self, train: Mapping[str, Tensor], quiz: Mapping[str, Tensor], step_size: float
    ) -> Tensor:
        """``CE(z_S(q; θ'(w)), y_q)`` with ``θ'(w) = θ − λ·∇_θ L_S(x; θ, w)``: differentiable in ``w``."""
        params = {n: p for n, p in self.student.named_parameters() if p.requires_grad}
        logits_T = self.meta_teacher(**model_inputs(train)).logits  # with grad: w enters the pilot loss here
        pilot, _, _ = self.kd_objective(self.student(**model_inputs(train)).logits, logits_T, train["labels"])
        grads = torch.autograd.grad(pilot, list(params.values()), create_graph=True, allow_unused=True)
        fast = {n: p if g is None else p - step_size * g for (n, p), g in zip(params.items(), grads)}
        was_training = self.student.training
        self.student.eval()
        try:
            logits_q = functional_call(self.student, fast, args=(), kwargs=model_inputs(quiz)).logits
        finally:
            self.student.train(was_training)
        return F.cross_entropy(logits_q, quiz["labels"])

    def teacher_step(self, train: Mapping[str, Tensor], quiz: Mapping[str, Tensor]) -> Tensor:
        """Steps 1–2 of Algorithm 1: pilot update, then one teacher step on the pilot's quiz loss."""
        if self.teacher_optimizer is None:
            raise RuntimeError(
                "meta_kd: the teacher optimizer is created in configure_optimizers (run under a Trainer)"
            )
        self.meta_teacher.eval()
        quiz_loss = self.quiz_loss_after_pilot(train, quiz, self.pilot_step_size())
        teacher_params = list(self.meta_teacher.parameters())
        grads = torch.autograd.grad(quiz_loss, teacher_params, allow_unused=True)
        for p, g in zip(teacher_params, grads):
            p.grad = None if g is None else g.detach()
        torch.nn.utils.clip_grad_norm_(teacher_params, self.teacher_max_grad_norm)
        self.teacher_optimizer.step()
        self.teacher_optimizer.zero_grad(set_to_none=True)
        if self.teacher_scheduler is not None:
            self.teacher_scheduler.step()
        return quiz_loss.detach()

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        if "idx" not in batch:
            raise KeyError("meta_kd holds its quiz set out by example id: training batches need 'idx'")
        held_out = is_quiz(batch["idx"], self.quiz_fraction).to(batch["input_ids"].device)
        self.quiz.add(batch, held_out)
        if bool(held_out.all()):
            return None  # nothing left to train on in this batch (Lightning skips the step)
        train = _select(batch, ~held_out)
        if len(self.quiz):
            quiz_loss = self.teacher_step(train, self.quiz.batch())
            self.log("loss/quiz", quiz_loss, batch_size=len(self.quiz))
        return super().training_step(train, batch_idx)

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Step 3: the student's KD objective against the teacher as just updated (no gradient to it)."""
        self.meta_teacher.eval()
        with torch.no_grad():
            logits_T = self.meta_teacher(**model_inputs(batch)).logits
        loss, ce, kd = self.kd_objective(self(batch), logits_T, batch["labels"])
        return {"loss": loss, "loss/ce": ce, "loss/kd_kl": kd}
