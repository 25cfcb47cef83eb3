"""slimnlp's per-step overhead for logit KD vs a hand-written PyTorch loop doing the same work.

    python benchmarks/kd_step_overhead.py [--steps 30] [--rounds 3]

Teacher: the real MiniLM-L6 (6x384); student: its 4-layer skip cut; batch 32 x 64 tokens; AdamW with the
BERT no-decay groups, linear warmup/decay, grad-norm clipping at 1.0, KL(tau=4) + CE with alpha=0.5.
The two loops alternate in rounds so drift (thermal, other load) hits both; the median step time of each
is reported. Step time = wall time between the starts of consecutive steps (dataloading, logging and
hooks included).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from common import StepTimer, median_ms, minilm
from torch.utils.data import DataLoader
from transformers import get_scheduler

from slimnlp.batch import model_inputs
from slimnlp.losses.kd import kd_kl
from slimnlp.models.students import layer_subset
from slimnlp.techniques.base import TaskInfo
from slimnlp.techniques.kd import LogitKD

BATCH, SEQ, ALPHA, TAU, LR = 32, 64, 0.5, 4.0, 1e-4


def make_batches(n: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(1000, vocab, (BATCH, SEQ), generator=g),
            "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
            "token_type_ids": torch.zeros(BATCH, SEQ, dtype=torch.long),
            "labels": torch.randint(0, 3, (BATCH,), generator=g),
            "idx": torch.arange(i * BATCH, (i + 1) * BATCH),
        }
        for i in range(n)
    ]


def slimnlp_steps(student, teacher, batches) -> list[float]:
    technique = LogitKD(
        alpha=ALPHA, temperature=TAU, student=student, teacher=teacher, task=TaskInfo("bench", 3),
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=0.01),
        lr_scheduler={"name": "linear", "warmup_ratio": 0.1},
    )
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=len(batches), accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        gradient_clip_val=1.0, callbacks=[timer],
    )
    trainer.fit(technique, train_dataloaders=DataLoader(batches, batch_size=None))
    return timer.step_times(skip=3)


def hand_written_steps(student, teacher, batches) -> list[float]:
    decay = [p for p in student.parameters() if p.ndim >= 2]
    no_decay = [p for p in student.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    scheduler = get_scheduler("linear", optimizer, int(0.1 * len(batches)), len(batches))
    student.train()
    teacher.eval()
    starts = []
    for batch in DataLoader(batches, batch_size=None):
        starts.append(time.perf_counter())
        inputs = model_inputs(batch)
        with torch.no_grad():
            logits_T = teacher(**inputs).logits
        logits_S = student(**inputs).logits
        loss = ALPHA * F.cross_entropy(logits_S, batch["labels"]) + (1 - ALPHA) * kd_kl(logits_S, logits_T, TAU)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    starts.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(starts)][3:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = minilm()
    base_student = layer_subset(teacher, num_labels=3, num_layers=4)
    batches = make_batches(args.steps, teacher.config.vocab_size)
    times = {"slimnlp": [], "hand-written": []}
    for r in range(args.rounds):
        times["slimnlp"] += slimnlp_steps(copy.deepcopy(base_student), teacher, batches)
        times["hand-written"] += hand_written_steps(copy.deepcopy(base_student), teacher, batches)
        print(f"round {r + 1}: " + ", ".join(f"{k} {median_ms(v):.0f} ms" for k, v in times.items()), flush=True)
    ours, hand = median_ms(times["slimnlp"]), median_ms(times["hand-written"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds}x{args.steps} steps")
    print(f"median step: slimnlp {ours:.1f} ms, hand-written {hand:.1f} ms, overhead {100 * (ours / hand - 1):+.1f}%")


if __name__ == "__main__":
    main()
