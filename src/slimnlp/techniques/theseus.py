"""BERT-of-Theseus: compression by progressive module replacing, trained as the reference code trains it.

Xu et al. 2020, "BERT-of-Theseus: Compressing BERT by Progressive Module Replacing" (EMNLP), reference
code JetRunner/BERT-of-Theseus (``run_glue.py``, ``bert_of_theseus/replacement_scheduler.py``,
``bert_of_theseus/modeling_bert_of_theseus.py``). No distillation loss: the only objective is the task's

    L = CE(f(x; prd_1|scc_1, …, prd_n|scc_n), y),   scc_i replaces prd_i with probability p = p(t)

where the predecessor (the fine-tuned teacher, ``L_T`` layers) is cut into ``n = L_S`` modules of
``L_T / L_S`` consecutive layers and successor ``i`` is student layer ``i``. One run, one optimizer, one LR
schedule, as ``run_glue.py``'s single ``train()``: ``p(t)`` after ``t`` optimizer steps is

- ``scheduler=linear``: ``p = min(1, k·t + b)`` (``LinearReplacementScheduler``), ``b = replacing_rate``,
  ``k = scheduler_linear_k`` a fixed slope per optimizer step, independent of the run's length;
- ``scheduler=constant``: ``p = replacing_rate`` for the first ``steps_for_replacing`` steps, then 1
  (``ConstantReplacementScheduler``).

Successor fine-tuning is the tail of the same run once ``p`` reaches 1 (only the successor model runs, same
optimizer and LR schedule); a run shorter than that step never fine-tunes the successors alone, which is
logged. Defaults are the reference README's recommended commands: linear with ``b = 0.3``, ``k = 0.0006``
(``--replacing_rate 0.3 --scheduler_type linear --scheduler_linear_k 0.0006``), and for the constant scheduler
``p = 0.5`` over ``2500`` steps (``--replacing_rate 0.5 --steps_for_replacing 2500``; this module's default rate
stays 0.3, set ``technique.replacing_rate=0.5``). The argparse defaults (``--scheduler_linear_k 0``,
``--steps_for_replacing 0``, ``--replacing_rate`` required) are placeholders, not recommendations.

What is shared and frozen follows ``run_glue.py``: the compound runs on the predecessor's embeddings, pooler and
classifier, and the optimizer holds only the successor layers (``model.bert.encoder.scc_layer``). So the
fine-tuned teacher's embeddings, pooler and classifier are copied into the student and stay frozen; only the
student's encoder layers train. The exported student is the successor model with those (teacher) weights,
every parameter trainable again. The predecessor layers are a deep copy of the runner's teacher (that teacher
is evaluated later and never touched); they run in the student's train/eval mode, dropout included, as in the
reference. In eval mode only the successors run, so validation measures the successor model.

Successor initialization: ``run_glue.py`` deep-copies the first ``L_S`` layers of the fine-tuned predecessor
(``scc_layer = [deepcopy(layer[ix]) for ix in range(scc_n_layer)]``). ``conf/technique/theseus.yaml`` asks the
runner for that student (``_student_: {init: first, init_from: finetuned}``); ``student.init=...`` or
``student.init_from=...`` on the command line wins.

Deviations from the reference, kept on purpose:

- optimizer and LR schedule are the run's ``optim`` group, shared by every technique (AdamW, 10% warm-up, linear
  decay); the README's command is lr 2e-5, no warm-up, no weight decay: ``optim.optimizer.lr=2e-5
  optim.optimizer.weight_decay=0 optim.lr_scheduler.warmup_ratio=0`` matches it;
- gradient clipping (``trainer.gradient_clip_val``) measures the successors' gradients only; the reference clips
  ``model.parameters()``, whose norm also counts the gradients of the predecessor, embeddings and head (never
  stepped there);
- a step in which no successor is drawn updates nothing (Lightning leaves gradients ``None``); the reference's
  zero-filled gradients still let AdamW's moments move the successors;
- the tested student is the best validation checkpoint, as for every technique; ``run_glue.py`` saves its last;
- ``replacing_rate = 0`` is allowed (the reference needs (0, 1]), and ``steps_for_replacing = 0`` means p = 1
  from the first step (the reference runs one step at p first).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from slimnlp.batch import model_inputs
from slimnlp.checks import integer, number, require
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.theseus import SCHEDULERS, ReplacementScheduler, compound_layers, sample_replacement
from slimnlp.techniques.base import ModelConfigs, Requirements, Technique

log = logging.getLogger(__name__)


class BertOfTheseus(Technique):
    def __init__(
        self,
        scheduler: str = "linear",
        replacing_rate: float = 0.3,
        scheduler_linear_k: float = 0.0006,
        steps_for_replacing: int = 2500,
        **base: Any,
    ) -> None:
        self.validate_hparams(scheduler, replacing_rate, scheduler_linear_k, steps_for_replacing)
        super().__init__(**base)
        self.replacement = ReplacementScheduler(
            scheduler, float(replacing_rate), float(scheduler_linear_k), int(steps_for_replacing)
        )
        self._share_and_freeze()

    # ------------------------------------------------------------------ config
    @classmethod
    def validate_hparams(
        cls,
        scheduler: str,
        replacing_rate: float,
        scheduler_linear_k: float,
        steps_for_replacing: int,
        **_: Any,
    ) -> None:
        if scheduler not in SCHEDULERS:
            raise ConfigError("technique.scheduler", scheduler, f"allowed: {', '.join(SCHEDULERS)}")
        require("technique.replacing_rate", replacing_rate, number(0, 1), "linear: the base rate b")
        require("technique.scheduler_linear_k", scheduler_linear_k, number(0, lo_open=True),
                "the slope k per optimizer step")
        require("technique.steps_for_replacing", steps_for_replacing, integer(0), "optimizer steps before p = 1")

    @classmethod
    def requirements(cls, **_: Any) -> Requirements:
        # Module replacing runs a random subset of the successors each step: the others get no gradient.
        return Requirements(teacher=True, find_unused_parameters=True)

    @classmethod
    def check_models(cls, models: ModelConfigs, **hparams: Any) -> None:
        num_T, num_S = models.teacher.num_hidden_layers, models.student.num_hidden_layers
        if num_T % num_S:
            valid = [d for d in range(1, num_T + 1) if num_T % d == 0]
            raise ConfigError(
                "student.num_layers",
                num_S,
                f"a divisor of the teacher's {num_T} layers ({', '.join(map(str, valid))}): each successor "
                "replaces k = L_T / L_S consecutive teacher layers",
            )
        for key in ("model_type", "hidden_size"):
            models.require_same(key, "successor and predecessor layers must be interchangeable")

    # ------------------------------------------------------------------- setup
    def _share_and_freeze(self) -> None:
        """Hold a frozen copy of the teacher's layers, share its embeddings and head (shapes: check_models)."""
        teacher, student = self.teacher, self.student
        assert teacher is not None
        num_T, num_S = structure.num_layers(teacher), structure.num_layers(student)
        self.block = num_T // num_S
        predecessors = copy.deepcopy(structure.encoder_layers(teacher)).requires_grad_(False)
        object.__setattr__(self, "_predecessors", predecessors)  # like the teacher: never in checkpoints
        _copy_shared_weights(teacher, student)
        for param in student.parameters():
            param.requires_grad_(False)
        structure.encoder_layers(student).requires_grad_(True)
        log.info(
            "theseus: %d predecessor layers -> %d successors (k=%d); teacher layers -> student layer: %s",
            num_T,
            num_S,
            self.block,
            ", ".join(f"{i * self.block}-{(i + 1) * self.block - 1}->{i}" for i in range(num_S)),
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._predecessors.to(self.device)

    def on_train_start(self) -> None:
        super().on_train_start()
        total, full = int(self.trainer.estimated_stepping_batches), self.replacement.successor_only_from()
        r = self.replacement
        rule = (
            f"p = min(1, {r.k:g}*t + {r.rate:g})"
            if r.kind == "linear"
            else f"p = {r.rate:g} for t < {r.steps_for_replacing}, then 1"
        )
        if full < total:
            log.info("theseus: %s; successor-only fine-tuning from step %d of %d", rule, full, total)
        else:
            log.warning(
                "theseus: %s reaches p = 1 only at step %d, after this run's %d steps: no successor-only "
                "fine-tuning (more epochs, or a larger scheduler_linear_k / smaller steps_for_replacing)",
                rule,
                full,
                total,
            )

    # ----------------------------------------------------------------- training
    def replace_rate(self, step: int) -> float:
        """The replacement probability p after ``step`` optimizer steps (the reference's scheduler)."""
        return self.replacement(step)

    def compound_logits(self, batch: Mapping[str, Tensor], replaced: list[bool]) -> Tensor:
        """Logits of the compound model in which successor ``i`` stands in for block ``i`` where ``replaced[i]``."""
        successors = structure.encoder_layers(self.student)
        self._predecessors.train(self.student.training)
        layers = compound_layers(self._predecessors, successors, replaced)
        with structure.lent_layers(self.student, layers):
            return self.student(**model_inputs(batch)).logits

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # global_step: optimizer steps so far, the count the reference's scheduler has reached at this batch
        rate = self.replace_rate(self.global_step)
        if rate == 1.0:
            logits = self(batch)  # the successor model alone: no predecessor layer would run
        else:
            replaced = sample_replacement(structure.num_layers(self.student), rate)
            logits = self.compound_logits(batch, replaced)
        ce = F.cross_entropy(logits, batch["labels"])
        if not ce.requires_grad:
            # No successor drawn: the step ran the frozen teacher only. It updates nothing (every gradient stays
            # None, so the optimizer skips every parameter) but still counts as a step, as in the reference.
            ce = ce.detach().requires_grad_()
        return {"loss": ce, "loss/ce": ce, "theseus/replace_rate": logits.new_tensor(rate)}

    def export_student(self) -> PreTrainedModel:
        """The successor model with the shared (teacher) embeddings and head; nothing left frozen."""
        return self.student.requires_grad_(True)


def _copy_shared_weights(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    """Everything outside the encoder layers (embeddings, pooler, classifier) from teacher to student."""
    prefix = f"{structure.layers_prefix(student)}."
    source = teacher.state_dict()
    shared = {k: v for k, v in student.state_dict().items() if not k.startswith(prefix)}
    mismatched = [k for k, v in shared.items() if k not in source or source[k].shape != v.shape]
    if mismatched:
        raise ConfigError(
            "student",
            type(student).__name__,
            f"the teacher's architecture outside the encoder layers (differs at {', '.join(mismatched[:3])})",
        )
    student.load_state_dict({k: source[k] for k in shared}, strict=False)
