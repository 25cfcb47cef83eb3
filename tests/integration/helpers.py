"""Tiny, real end-to-end runs: a 4-layer 32-wide BERT teacher with the real vocabulary, a synthetic
but learnable 3-class corpus, the real runner. Seconds per run on a CPU."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from transformers import AutoTokenizer, BertConfig, BertModel

from slimnlp.config import compose_config

WORDS = {
    "negative": ["awful", "terrible", "hate", "broken", "worst", "sad"],
    "neutral": ["table", "tuesday", "report", "meeting", "paper", "train"],
    "positive": ["great", "love", "wonderful", "happy", "best", "nice"],
}
FILLER = ["the", "a", "this", "it", "was", "is", "my", "day", "car", "phone", "really", "so"]


def write_corpus(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A corpus whose label is carried by a few cue words among filler: learnable in a few steps."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = list(WORDS)[i % 3]
            words = rng.sample(FILLER, 5) + rng.sample(WORDS[label], 2)
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    return path


def save_tiny_teacher(folder: Path, tokenizer_dir: Path, layers: int = 4) -> Path:
    """A pretrained-style tiny BERT checkpoint (no task head) with the real MiniLM tokenizer."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_overrides(root: Path, corpus: Path, teacher: Path) -> list[str]:
    return [
        f"paths.root_dir={root}",
        "data=local",
        f"data.source.path={corpus}",
        "data.task_name=tiny",
        "data.max_length=16",
        "data.batch_size=16",
        "data.eval_batch_size=32",
        "teacher=path",
        f"teacher.name_or_path={teacher}",
        "teacher.name=tiny_bert",
        "teacher.finetune.epochs=10",
        "teacher.finetune.lr=5e-4",
        "optim.optimizer.lr=5e-4",
        "trainer.max_epochs=10",
        "min_steps=0",  # the tiny budgets are the tests' own (the small-data rule has its own tests)
        "teacher.finetune.min_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "measure.repeats=3",
        "measure.warmup=1",
        "measure.runtimes=[torch]",  # the ONNX export, codecarbon and the attacks have their own tests
        "measure.energy_passes=1",
        "energy.enabled=false",
        "eval.robustness.attacks=[]",
    ]


def compose_run_config(overrides: list[str], output_dir: Path) -> Any:
    """Compose as the CLI does and register it as the current Hydra config (group choices included)."""
    cfg = compose_config([*overrides, f"paths.output_dir={output_dir}"])
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_tiny(tiny_setup, name: str, *extra: str) -> dict[str, Any]:
    """One real run of the runner on the tiny setup, in ``<root>/outputs/runs/<name>``."""
    from slimnlp.train import run

    root, corpus, teacher = tiny_setup
    cfg = compose_run_config([*tiny_overrides(root, corpus, teacher), *extra], root / "outputs" / "runs" / name)
    return run(cfg)


class CrashAtStep(Callback):
    """Simulates a killed run: raises after the optimizer step that reaches ``step`` (of the stage named
    ``stage`` only, when given)."""

    def __init__(self, step: int, stage: str | None = None) -> None:
        self.step, self.stage = step, stage

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        if self.stage is not None and pl_module.hparams.get("stage") != self.stage:
            return
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


class CrashAtTest(Callback):
    """Simulates a crash after training and its last validation, before the test pass."""

    def on_test_start(self, trainer, pl_module) -> None:
        raise RuntimeError("simulated crash before testing")


class RecordBatches(Callback):
    """Appends ``{"step", "epoch", "idx"}`` per training batch to a JSON-lines file (flushed every batch), so a
    test can see which examples each step trained on, also in a process it kills."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import json

        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                "idx": batch["idx"].tolist()}) + "\n")



class TrialOutcome(Callback):
    """Makes a sweep trial end as ``mode`` says: ``ok`` logs ``val/reported`` = ``value`` at every validation,
    ``nan_value`` logs NaN there, ``crash`` raises at the first training step."""

    def __init__(self, mode: str = "ok", value: float = 0.5) -> None:
        self.mode, self.value = mode, value

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        if self.mode == "crash":
            raise RuntimeError("simulated crash of a trial")

    def on_validation_end(self, trainer, pl_module) -> None:
        value = float("nan") if self.mode == "nan_value" else self.value
        trainer.callback_metrics["val/reported"] = torch.tensor(value)


class CrashOnce(Callback):
    """Simulates a pipeline killed in one stage: raises after optimizer step ``step`` of the first run whose
    technique class is ``technique``, leaving ``marker`` so that the same command run again does not crash."""

    def __init__(self, step: int, technique: str, marker: str) -> None:
        self.step, self.technique, self.marker = step, technique, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        if type(pl_module).__name__ == self.technique and trainer.global_step >= self.step and not self.marker.exists():
            self.marker.write_text("crashed once")
            raise RuntimeError(f"simulated crash in {self.technique} at step {trainer.global_step}")
