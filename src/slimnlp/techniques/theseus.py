"""BERT-of-Theseus: compression by progressive module replacing.

Xu et al. 2020, "BERT-of-Theseus: Compressing BERT by Progressive Module Replacing" (EMNLP), reference
code JetRunner/BERT-of-Theseus. No distillation loss: the only objective is the task's

    L = CE(f(x; prd_1|scc_1, …, prd_n|scc_n), y),   scc_i replaces prd_i with probability p_d = p(step)

where the predecessor (the fine-tuned teacher, ``L_T`` layers) is cut into ``n = L_S`` modules of
``k = L_T / L_S`` consecutive layers and successor ``i`` is student layer ``i``. ``p`` is constant or the
paper's linear curriculum ``p_d = min(1, k·t + b)`` (``slimnlp.schedules.Linear`` with ``start = b``,
``end = 1``; the ramp's slope follows from the stage's length), taken from the run's ``schedule`` group
(``schedule=constant schedule.end=0.5``; none chosen: the linear curriculum with b = 0.3). Two stages:

1. ``replace``: the compound model above; only the successor layers train. It runs to the end of its
   curriculum and keeps its last weights (no best-checkpoint pick halfway through the ramp).
2. ``finetune``: the successor model alone (``p = 1``), CE, so the successors learn to work together.

What is shared and frozen follows the reference ``run_glue.py``: the compound runs on the predecessor's
embeddings, pooler and classifier, and its optimizer holds only the successor layers — in both phases. So
here the fine-tuned teacher's embeddings, pooler and classifier are copied into the student at the start of
``replace`` and, like the predecessor layers, stay frozen; only the student's encoder layers are trained.
The exported student is the successor model with those (teacher) weights, every parameter trainable again.

The predecessor layers are a deep copy of the runner's teacher (that teacher is evaluated later and is
never touched); they run in the student's train/eval mode, dropout included, as in the reference. In eval
mode only the successors run, so validation measures the successor model, as the paper evaluates it.

Successor initialization is the student builder's job: the paper takes the first ``L_S`` layers of the
pretrained BERT (``student.init=first``); the reference copies them from the fine-tuned predecessor
(``student.init_from=finetuned``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from slimnlp.batch import model_inputs
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.modules.theseus import compound_layers, sample_replacement
from slimnlp.schedules import Linear
from slimnlp.techniques.base import ModelConfigs, Requirements, Stage, Technique

log = logging.getLogger(__name__)

STAGES = ("both", "replace", "finetune")
RateSchedule = Callable[[int, int], float]  # (step, total) -> replacement rate p
# The paper's curriculum with the reference README's base rate b = 0.3, reaching p = 1 at the end of the stage.
CURRICULUM = Linear(start=0.3, end=1.0)


class BertOfTheseus(Technique):
    def __init__(
        self,
        schedule: RateSchedule = CURRICULUM,
        stage: str = "both",
        replace_epochs: int | None = None,
        finetune_epochs: int | None = None,
        **base: Any,
    ) -> None:
        self.validate_hparams(schedule, stage, replace_epochs, finetune_epochs)
        if stage == "both":
            raise ConfigError(
                "technique.stage",
                stage,
                "replace or finetune when built directly; stage=both is run by the "
                "runner as the two stages of BertOfTheseus.stages()",
            )
        super().__init__(**base)
        self.stage = stage
        self.replacement_schedule = schedule
        self._share_and_freeze()

    # ------------------------------------------------------------------ config
    @classmethod
    def validate_hparams(
        cls,
        schedule: RateSchedule,
        stage: str,
        replace_epochs: int | None,
        finetune_epochs: int | None,
        **_: Any,
    ) -> None:
        if stage not in STAGES:
            raise ConfigError("technique.stage", stage, f"allowed: {', '.join(STAGES)}")
        for key, value in (("replace_epochs", replace_epochs), ("finetune_epochs", finetune_epochs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"technique.{key}", value, "null (trainer.max_epochs) or an integer >= 1")
        if not callable(schedule):
            raise ConfigError("schedule", schedule, "a slimnlp.schedules object or a callable (step, total) -> p")
        first, last = float(schedule(0, 1)), float(schedule(1, 1))
        if not (0.0 <= first <= 1.0 and 0.0 < last <= 1.0):
            raise ConfigError(
                "schedule",
                {"start": first, "end": last},
                "replacement rates in [0, 1] that end above 0 (at 0 no successor is ever trained)",
            )

    @classmethod
    def requirements(cls, stage: str = "both", **_: Any) -> Requirements:
        # Module replacing runs a random subset of the successors each step: the others get no gradient.
        return Requirements(teacher=True, find_unused_parameters=stage in ("both", "replace"))

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

    @classmethod
    def stages(
        cls,
        stage: str = "both",
        replace_epochs: int | None = None,
        finetune_epochs: int | None = None,
        **_: Any,
    ) -> list[Stage]:
        # Module replacing runs to the end of its curriculum (as the reference does); the successor model is then
        # selected on validation in successor fine-tuning.
        replace = Stage("replace", {"stage": "replace"}, replace_epochs, select_best=False)
        finetune = Stage("finetune", {"stage": "finetune"}, finetune_epochs)
        return {"both": [replace, finetune], "replace": [replace], "finetune": [finetune]}[stage]

    # ------------------------------------------------------------------- setup
    def _share_and_freeze(self) -> None:
        """Hold a frozen copy of the teacher's layers, share its embeddings and head (shapes: check_models)."""
        teacher, student = self.teacher, self.student
        assert teacher is not None
        num_T, num_S = structure.num_layers(teacher), structure.num_layers(student)
        self.block = num_T // num_S
        predecessors = None
        if self.stage == "replace":
            predecessors = copy.deepcopy(structure.encoder_layers(teacher)).requires_grad_(False)
            _copy_shared_weights(teacher, student)
            log.info(
                "theseus: %d predecessor layers -> %d successors (k=%d); teacher layers -> student layer: %s",
                num_T,
                num_S,
                self.block,
                ", ".join(f"{i * self.block}-{(i + 1) * self.block - 1}->{i}" for i in range(num_S)),
            )
        object.__setattr__(self, "_predecessors", predecessors)  # like the teacher: never in checkpoints
        successors = structure.encoder_layers(student)
        for param in student.parameters():
            param.requires_grad_(False)
        successors.requires_grad_(True)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self._predecessors is not None:
            self._predecessors.to(self.device)

    # ----------------------------------------------------------------- training
    def replace_rate(self, step: int, total: int) -> float:
        """The replacement probability p at ``step`` of ``total`` (1 in the successor fine-tuning stage)."""
        if self.stage == "finetune":
            return 1.0
        rate = float(self.replacement_schedule(step, total))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(
                f"replacement_schedule gave p={rate} at step {step}/{total}; it must lie in [0, 1]"
            )
        return rate

    def compound_logits(self, batch: Mapping[str, Tensor], replaced: list[bool]) -> Tensor:
        """Logits of the compound model in which successor ``i`` stands in for block ``i`` where ``replaced[i]``."""
        if self._predecessors is None:
            raise RuntimeError("the compound model exists only in the replace stage")
        successors = structure.encoder_layers(self.student)
        self._predecessors.train(self.student.training)
        layers = compound_layers(self._predecessors, successors, replaced)
        with structure.lent_layers(self.student, layers):
            return self.student(**model_inputs(batch)).logits

    def training_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        rate = self.replace_rate(self.global_step, int(self.trainer.estimated_stepping_batches))
        if rate == 1.0:
            logits = self(batch)  # the successor model alone: no predecessor layer would run
        else:
            replaced = sample_replacement(structure.num_layers(self.student), rate)
            logits = self.compound_logits(batch, replaced)
        ce = F.cross_entropy(logits, batch["labels"])
        if not ce.requires_grad:
            # No successor drawn: the step ran the frozen teacher only. As in the reference, it updates nothing
            # (every gradient stays None, so the optimizer skips every parameter) but still counts as a step.
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
