"""The small-data rule: every training stage takes at least ``min_steps`` optimizer steps.

An epoch count that suits 4,000 tweets (2 epochs = 250 steps at batch 32) gives 540 drug reviews 34 steps,
of which 10% are warm-up: a pretrained encoder with a fresh classification head then predicts the majority
class (measured: ``experiments/small_data.py``). So epochs are a floor-raised budget: a stage runs
``max(epochs, ceil(min_steps / steps_per_epoch))`` epochs, and the LR schedule, which reads the Trainer's
estimated steps, stretches with it. Large datasets are untouched (their epochs already give ``min_steps``);
``trainer.max_steps > 0`` is an explicit step budget and is left alone; ``min_steps=0`` turns the rule off.
The teacher's recipe has its own ``teacher.finetune.min_steps``; the student's is ``min_steps``.

The step budget rule: ``trainer.max_steps > 0`` is the *run's* number of student optimizer steps, whatever its
epochs say, and a technique of several stages splits it between them in proportion to each stage's
``budget_share`` (equal shares unless the technique says otherwise: TinyBERT's intermediate and prediction stages
get half each). That is what makes a table budget-equal: every technique takes the same number of optimizer steps.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("slimnlp")


def steps_per_epoch(
    num_examples: int,
    batch_size: int,
    world_size: int = 1,
    accumulate_grad_batches: int = 1,
    limit_train_batches: float | None = None,  # Lightning's: a float is a fraction, an int a batch count
) -> int:
    """Optimizer steps in one epoch, as Lightning counts them (a DistributedSampler pads every rank to the same
    number of examples; a last partial accumulation still steps)."""
    batches = math.ceil(math.ceil(num_examples / world_size) / batch_size)
    if isinstance(limit_train_batches, float):
        batches = int(batches * limit_train_batches)
    elif isinstance(limit_train_batches, int):
        batches = min(batches, limit_train_batches)
    return math.ceil(batches / accumulate_grad_batches)


def split_steps(total: int, shares: list[float]) -> list[int]:
    """``total`` optimizer steps split in proportion to ``shares`` (largest remainders), summing to ``total``;
    every stage gets at least one step."""
    if total < len(shares):
        raise ValueError(f"a budget of {total} steps cannot give each of {len(shares)} stages a step")
    if not shares or any(share <= 0 for share in shares):
        raise ValueError(f"stage budget shares must be > 0, got {shares}")
    exact = [total * share / sum(shares) for share in shares]
    steps = [max(1, math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    for i in by_remainder[: total - sum(steps)]:
        steps[i] += 1
    return steps


def epochs_for_min_steps(epochs: int | None, min_steps: int, per_epoch: int, max_steps: int = -1) -> int | None:
    """``epochs``, raised so that training takes at least ``min_steps`` optimizer steps."""
    if not min_steps or epochs is None or epochs < 0 or (max_steps is not None and max_steps > 0) or per_epoch < 1:
        return epochs
    return max(epochs, math.ceil(min_steps / per_epoch))


def apply_min_steps(trainer: Any, num_examples: int, batch_size: int, min_steps: int, who: str = "student") -> int:
    """Raise a built Trainer's ``max_epochs`` under the rule; returns the epochs it will run."""
    per_epoch = steps_per_epoch(
        num_examples, batch_size, trainer.world_size, trainer.accumulate_grad_batches, trainer.limit_train_batches
    )
    epochs = trainer.max_epochs
    raised = epochs_for_min_steps(epochs, min_steps, per_epoch, trainer.max_steps)
    if raised != epochs:
        log.info(
            "%s: %d training examples give %d optimizer steps per epoch; training %d epochs instead of %d to "
            "reach min_steps=%d", who, num_examples, per_epoch, raised, epochs, min_steps,
        )
        trainer.fit_loop.max_epochs = raised
    return raised
