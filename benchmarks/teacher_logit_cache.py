"""Epoch 2 vs epoch 1 of logit KD with the per-example teacher-logit cache (6L teacher -> 2L student).

    python benchmarks/teacher_logit_cache.py [--examples 1024]

Epoch 1 runs the teacher on every batch and fills the cache; epoch 2 reads the logits from it. Real
tweets (the embedded default data, dynamic padding, max_length 64), the real MiniLM-L6 teacher.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import lightning as L
import torch
from common import StepTimer, minilm, minilm_tokenizer

from slimnlp.data import TextClassificationDataModule
from slimnlp.data.sources import TweetSentiment
from slimnlp.models.students import layer_subset
from slimnlp.teacher_cache import TeacherLogitCache
from slimnlp.techniques.base import TaskInfo
from slimnlp.techniques.kd import LogitKD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    L.seed_everything(0)
    work = Path(tempfile.mkdtemp(prefix="slimnlp-bench-"))
    dm = TextClassificationDataModule(
        TweetSentiment(), minilm_tokenizer(), task_name="tweet_sentiment", max_train_samples=args.examples,
        max_eval_samples=64, cache_dir=str(work / "data"),
    )
    dm.prepare_data()
    dm.setup("fit")
    teacher = minilm()
    teacher_dir = work / "teacher"
    teacher.save_pretrained(teacher_dir)  # the cache keys on the teacher's weight files
    technique = LogitKD(
        student=layer_subset(teacher, num_labels=3, num_layers=2), teacher=teacher,
        task=TaskInfo.from_datamodule(dm), optimizer=partial(torch.optim.AdamW, lr=1e-4),
    )
    technique.logit_cache = TeacherLogitCache.for_run(
        work / "logits", teacher_dir, dm.fingerprint, len(dm.datasets["train"]), dm.num_labels
    )
    timer = StepTimer()
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(technique, train_dataloaders=dm.train_dataloader())
    first, *later = timer.epoch_times
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.examples} examples/epoch")
    for i, seconds in enumerate(timer.epoch_times, 1):
        print(f"epoch {i}: {seconds:.1f} s")
    print(f"speed-up of cached epochs over epoch 1: {first / (sum(later) / len(later)):.2f}x")


if __name__ == "__main__":
    main()
