"""Unlabelled text for task-agnostic (general) distillation: the texts of labelled corpora with their labels
dropped, and text files of your own, mixed and split into a training corpus and a held-out slice.

TinyBERT's first stage and MiniLM(v2) distil a pretrained teacher on raw text (Jiao et al. 2020 §3.3, Wang et al.
2020, 2021), where the loss on held-out text is the only thing to track. ``TextCorpusDataModule`` serves that:

- ``corpora``: classification sources (the ``source`` of a ``data`` option: the tweets, BBC News, the drug
  reviews, GLUE …). Only the texts of each one's *training* split are used, split as its data option splits
  it (``split_seed``, ``val_fraction``, ``test_fraction``), so a student distilled on them and then fine-tuned on
  that task has never seen the task's validation or test texts. Pair tasks contribute both texts.
- ``files``: paths of your own text: a ``.txt`` file (one text per non-empty line), a csv/tsv/json/jsonl/parquet
  file (its ``text_column``), or a folder of ``.txt`` files (one text per file, as BBC News ships articles).

The texts are de-duplicated (first occurrence kept), shuffled with ``seed``, and the first ``val_samples`` become
the held-out slice. The rest is concatenated, or, with ``probabilities`` (one per source, corpora first, then
files), mixed by ``datasets.interleave_datasets`` until every source is exhausted (smaller sources repeat).
Batches carry ``input_ids``, ``attention_mask`` (and ``token_type_ids``), padded per batch; no labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, interleave_datasets
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from slimnlp.data.datamodule import check_positive, seeded_loader
from slimnlp.data.sources import LocalFiles, Source, file_identity, read_table
from slimnlp.data.splits import make_splits
from slimnlp.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
TABLE_SUFFIXES = LocalFiles.suffixes


class TextFiles:
    """Texts on disk, no labels: a ``.txt`` file (a text per non-empty line), a table file's ``text_column``, or a
    folder of ``.txt`` files (a text per file, blank ones skipped)."""

    def __init__(self, path: str | Path, text_column: str = "text") -> None:
        self.path, self.text_column = Path(path).expanduser(), text_column
        if not self.path.exists():
            raise ConfigError("data.files", str(path), "no such file or folder")

    def identity(self) -> str:
        return f"TextFiles:{self.text_column}:{file_identity(self.path)}"

    def texts(self) -> list[str]:
        path = self.path
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
            if not files:
                raise ConfigError("data.files", str(path), "a folder holding .txt files (one text per file)")
            return [t for f in files if (t := f.read_text(encoding="utf-8", errors="replace").strip())]
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if line.strip()]
        if suffix not in TABLE_SUFFIXES:
            raise ConfigError("data.files", str(path), f"a .txt file, a folder of .txt files or a {list(TABLE_SUFFIXES)} file")
        table = read_table(path)
        if self.text_column not in table.columns:
            raise ConfigError("data.text_column", self.text_column, f"a column of {path.name}: {list(table.columns)}")
        return [t for t in table[self.text_column].fillna("").astype(str).str.strip() if t]


def task_texts(source: Source, val_fraction: float, test_fraction: float, split_seed: int) -> list[str]:
    """The texts of ``source``'s training split as the classification datamodule splits it (labels dropped)."""
    splits, _ = make_splits(source.load(), val_fraction, test_fraction, split_seed)
    train = splits["train"]
    texts = list(train["text"])
    if "text_pair" in train.column_names:
        texts += list(train["text_pair"])
    return [t.strip() for t in texts if t and t.strip()]


class TextCorpusDataModule(LightningDataModule):
    """Unlabelled training text and a held-out slice (see the module docstring). ``primary_metric`` is the
    held-out distillation loss, minimised: the validation that picks the checkpoint."""

    metrics: tuple[str, ...] = ()  # no task metrics: nothing is classified
    test_split_names: tuple[str, ...] = ()
    num_labels = 2  # the throwaway head the runner's student and teacher are built with; never trained or saved
    label_names: tuple[str, ...] = ()

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        corpora: Sequence[Source] = (),
        files: Sequence[str] = (),
        text_column: str = "text",
        probabilities: Sequence[float] | None = None,
        task_name: str = "text_corpus",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_train_samples: int | None = None,
        val_samples: int = 1000,
        num_workers: int = 0,
        seed: int = 42,
        split_seed: int = 42,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        primary_metric: str = "loss",
        primary_mode: str = "min",
    ) -> None:
        super().__init__()
        for key, value in (("data.max_length", max_length), ("data.batch_size", batch_size),
                           ("data.eval_batch_size", eval_batch_size), ("data.val_samples", val_samples)):
            check_positive(key, value)
        check_positive("data.max_train_samples", max_train_samples, optional=True)
        if max_length > tokenizer.model_max_length:
            raise ConfigError("data.max_length", max_length, f"at most {tokenizer.model_max_length} for this tokenizer")
        if (primary_metric, primary_mode) != ("loss", "min"):
            raise ConfigError("data.primary_metric", primary_metric,
                              "loss (with primary_mode min): unlabelled text has no other validation metric")
        if any(isinstance(c, str) for c in corpora):
            raise ConfigError("data.corpora", list(corpora), "Source objects here: the runner turns data option "
                              "names into them (slimnlp.build.corpus_sources)")
        if isinstance(files, (str, Path)):
            files = [files]
        sources = [*corpora, *(TextFiles(f, text_column) for f in files)]
        if not sources:
            raise ConfigError("data.corpora", list(corpora),
                              "one or more data options (e.g. [tweet_sentiment, bbc_news]) or data.files")
        if probabilities is not None:
            probabilities = list(probabilities)
            if len(probabilities) != len(sources) or not all(
                isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0 for p in probabilities
            ):
                raise ConfigError("data.probabilities", probabilities,
                                  f"null (concatenate) or {len(sources)} positive weights, one per source (corpora, then files)")
        self.tokenizer, self.sources, self.probabilities = tokenizer, sources, probabilities
        self.task_name, self.primary_metric, self.primary_mode = task_name, primary_metric, primary_mode
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.max_train_samples, self.val_samples = max_train_samples, val_samples
        self.num_workers, self.seed = num_workers, seed
        self.split = (val_fraction, test_fraction, split_seed)
        self.collate = DataCollatorWithPadding(tokenizer)
        self._datasets: dict[str, Dataset] | None = None
        self._summary: dict[str, Any] = {}

    def _source_texts(self) -> list[list[str]]:
        out = []
        for source in self.sources:
            texts = source.texts() if isinstance(source, TextFiles) else task_texts(source, *self.split)
            out.append(texts)
        return out

    def prepare_data(self) -> None:
        """Nothing to download: the texts are read and tokenized in ``setup``."""

    def setup(self, stage: str | None = None) -> None:
        if self._datasets is not None:
            return
        per_source = self._source_texts()
        seen: set[str] = set()
        rows: dict[str, list] = {"text": [], "source": []}
        for i, texts in enumerate(per_source):
            for text in texts:
                if text not in seen:
                    seen.add(text)
                    rows["text"].append(text)
                    rows["source"].append(i)
        if not rows["text"]:
            names = ", ".join(self._name(s) for s in self.sources)
            raise ConfigError("data.corpora", names, "sources with at least one non-empty text (these have none)")
        if len(rows["text"]) <= self.val_samples:
            raise ConfigError("data.val_samples", self.val_samples,
                              f"fewer than the corpus's {len(rows['text'])} distinct texts (the rest is trained on)")
        pool = Dataset.from_dict(rows).shuffle(seed=self.seed)
        validation = pool.select(range(self.val_samples))
        train = pool.select(range(self.val_samples, len(pool)))
        if self.probabilities is not None:
            parts = [train.filter(lambda s, i=i: s == i, input_columns="source") for i in range(len(self.sources))]
            kept = [(p, w) for p, w in zip(parts, self.probabilities) if len(p)]
            total = sum(w for _, w in kept)
            train = interleave_datasets([p for p, _ in kept], probabilities=[w / total for _, w in kept],
                                        seed=self.seed, stopping_strategy="all_exhausted")
        if self.max_train_samples is not None and self.max_train_samples < len(train):
            train = train.select(range(self.max_train_samples))
        self._summary = {
            "sources": [self._name(s) for s in self.sources],
            "texts_per_source": [len(t) for t in per_source],
            "distinct_texts": len(pool),
            "probabilities": self.probabilities,
            "seed": self.seed,
            "subset_sizes": {"train": len(train), "validation": len(validation)},
        }
        log.info("text corpus: %s", self._summary)
        self._datasets = {"train": self._tokenized(train), "validation": self._tokenized(validation)}

    @staticmethod
    def _name(source: Any) -> str:
        return str(source.path) if isinstance(source, TextFiles) else type(source).__name__

    def _tokenized(self, ds: Dataset) -> Dataset:
        ds = ds.map(lambda b: self.tokenizer(b["text"], truncation=True, max_length=self.max_length),
                    batched=True, remove_columns=ds.column_names, keep_in_memory=True)
        ds.set_format("torch", columns=[c for c in TOKEN_COLUMNS if c in ds.column_names])
        return ds

    @property
    def datasets(self) -> dict[str, Dataset]:
        if self._datasets is None:
            raise RuntimeError("call setup() on the datamodule first")
        return self._datasets

    @property
    def fingerprint(self) -> str:
        identities = "|".join(s.identity() for s in self.sources)
        sizes = ",".join(f"{name}={len(ds)}" for name, ds in self.datasets.items())
        return f"{self.task_name}:{identities}:{self.seed}:{sizes}"

    def split_summary(self) -> dict[str, Any]:
        self.datasets  # noqa: B018 — set up first
        return dict(self._summary)

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        return seeded_loader(self.datasets[split], batch_size, self.collate, self.num_workers, shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size)
