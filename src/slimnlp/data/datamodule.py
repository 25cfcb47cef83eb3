"""One LightningDataModule for every text-classification corpus: split once, tokenize once, cache on disk.

Every technique in a comparison sees byte-identical inputs: the tokenized splits are saved under a key
that covers the data, the split parameters, the tokenizer and ``max_length``, and later runs only load
them. Subsetting (``max_*_samples``) happens after loading, so small debug runs share the full cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

# torchdata 0.11 calls a torch API that torch 2.13 deprecates, once per loader: not ours to fix.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from slimnlp.data.sources import Source
from slimnlp.data.splits import make_splits, split_order
from slimnlp.errors import ConfigError
from slimnlp.metrics.classification import METRIC_NAMES

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached layout or a source's cleaning changes: old caches are not reused
META_FILE = "slimnlp_meta.json"
MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels", "idx")
# tokenizer init kwargs that name where the files were found, not how text is tokenized
_LOCATION_KWARGS = {
    "name_or_path",
    "vocab_file",
    "tokenizer_file",
    "is_local",
    "local_files_only",
    "cache_dir",
}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """Class, a hash of the vocabulary and a hash of the tokenizer's settings: what tokenizes, not where it was
    loaded from (a local ``name_or_path`` is a folder inside the virtual environment, which moves with it)."""
    settings = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _LOCATION_KWARGS}
    vocab = _sha(sorted(tokenizer.get_vocab().items()))[:16]
    return f"{type(tokenizer).__name__}:{vocab}:{_sha(settings)[:16]}"


def check_positive(key: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, value, "a positive int" + (" or null" if optional else ""))


def seeded_loader(dataset: Dataset, batch_size: int, collate: Any, num_workers: int, shuffle: bool = False) -> DataLoader:
    """A loader over ``dataset``, shuffled (when asked) from the run seed: ``seed_everything`` sets
    ``torch.initial_seed()``, so the order is reproducible per seed and independent of how many random numbers
    model construction consumed. A StatefulDataLoader, whose position Lightning checkpoints, so a run resumed
    mid-epoch continues with the batches that epoch had not yet seen instead of replaying its first ones."""
    generator = torch.Generator().manual_seed(torch.initial_seed()) if shuffle else None
    return StatefulDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                              collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0)


class TextClassificationDataModule(LightningDataModule):
    """Batches of ``input_ids, attention_mask, [token_type_ids], labels, idx`` for a classification corpus.

    ``source`` gives the raw splits (see :mod:`slimnlp.data.sources`); missing validation/test splits are
    carved out with a seeded stratified split. ``idx`` is the example's position in its split after
    subsetting, so per-example teacher outputs can be cached.
    """

    def __init__(
        self,
        source: Source,
        tokenizer: PreTrainedTokenizerBase,
        task_name: str,
        max_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        num_workers: int = 0,
        split_seed: int = 42,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        metrics: Sequence[str] = ("acc", "f1"),
        primary_metric: str = "acc",
        cache_dir: str | os.PathLike = "outputs/cache/data",
    ) -> None:
        super().__init__()
        if not isinstance(task_name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", task_name):
            raise ConfigError("data.task_name", task_name, "letters, digits, '_', '.' or '-' (used in paths)")
        check_positive("data.max_length", max_length)
        if max_length > tokenizer.model_max_length:
            raise ConfigError(
                "data.max_length", max_length, f"at most {tokenizer.model_max_length} for this tokenizer"
            )
        check_positive("data.batch_size", batch_size)
        check_positive("data.eval_batch_size", eval_batch_size)
        check_positive("data.max_train_samples", max_train_samples, optional=True)
        check_positive("data.max_eval_samples", max_eval_samples, optional=True)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError("data.num_workers", num_workers, "an int >= 0")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise ConfigError("data.split_seed", split_seed, "an int")
        for key, fraction in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
            if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise ConfigError(key, fraction, "a fraction strictly between 0 and 1")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                "data.val_fraction", val_fraction, f"val_fraction + test_fraction ({test_fraction}) < 1"
            )
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in metrics if m not in METRIC_NAMES]
        if not metrics or unknown or len(set(metrics)) < len(metrics):
            raise ConfigError(
                "data.metrics", metrics, f"a non-empty list of distinct names from {list(METRIC_NAMES)}"
            )
        if primary_metric not in metrics:
            raise ConfigError("data.primary_metric", primary_metric, f"one of data.metrics {metrics}")

        self.source, self.tokenizer, self.task_name = source, tokenizer, task_name
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.num_workers, self.split_seed = num_workers, split_seed
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.metrics, self.primary_metric = metrics, primary_metric
        self.cache_dir = Path(cache_dir)
        self.collate = DataCollatorWithPadding(tokenizer)
        self._cache_key: str | None = None
        self._datasets: DatasetDict | None = None
        self._meta: dict[str, Any] = {}

    # ---- cache -------------------------------------------------------------------------------------
    @property
    def cache_key(self) -> str:
        """Hash of everything the tokenized splits depend on."""
        if self._cache_key is None:
            self._cache_key = _sha(
                {
                    "format": CACHE_FORMAT,
                    "source": self.source.identity(),
                    "split": [self.split_seed, self.val_fraction, self.test_fraction],
                    "tokenizer": tokenizer_identity(self.tokenizer),
                    "max_length": self.max_length,
                }
            )[:12]
        return self._cache_key

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / f"{self.task_name}-{self.cache_key}"

    def _tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        pairs = batch.get("text_pair")
        return self.tokenizer(batch["text"], pairs, truncation=True, max_length=self.max_length)

    def prepare_data(self) -> None:
        """Load, split and tokenize the source once; later calls (and runs) find the cache folder."""
        path = self.cache_path
        if path.exists():
            log.info("data cache hit: %s", path)
            return
        log.info("data cache miss: building %s", path)
        splits, summary = make_splits(
            self.source.load(), self.val_fraction, self.test_fraction, self.split_seed
        )
        tokenized = DatasetDict(
            {
                name: ds.map(self._tokenize, batched=True, new_fingerprint=f"{self.cache_key}-{name}")
                for name, ds in splits.items()
            }
        )
        meta = {
            "task_name": self.task_name,
            "cache_key": self.cache_key,
            "label_names": list(splits["train"].features["label"].names),
            "source": self.source.identity(),
            "source_stats": self.source.stats,
            "tokenizer": tokenizer_identity(self.tokenizer),
            "max_length": self.max_length,
            "split_summary": summary,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tokenized.save_to_disk(str(tmp))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            os.rename(tmp, path)  # atomic: readers see a complete folder or none
        except OSError:
            if not path.exists():
                raise
            log.info("data cache built concurrently by another process: %s", path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---- setup -------------------------------------------------------------------------------------
    def _subset(self, name: str, ds: Dataset) -> Dataset:
        """Seeded subset (kept in memory: nothing is written into the shared cache folder)."""
        limit = self.max_train_samples if name == "train" else self.max_eval_samples
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=self.split_seed, keep_in_memory=True).select(
                range(limit), keep_in_memory=True
            )
            ds = ds.flatten_indices(keep_in_memory=True)
        if len(ds) == 0:
            raise ConfigError("data.source", name, f"split '{name}' is empty; every split needs examples")
        ds = ds.rename_column("label", "labels").add_column("idx", list(range(len(ds))))
        ds.set_format("torch", columns=[c for c in MODEL_COLUMNS if c in ds.column_names])
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self._datasets is not None:
            return
        if not self.cache_path.exists():
            self.prepare_data()
        self._meta = json.loads((self.cache_path / META_FILE).read_text())
        loaded = load_from_disk(str(self.cache_path))
        self._datasets = DatasetDict({name: self._subset(name, loaded[name]) for name in loaded})

    def _ready(self) -> DatasetDict:
        if self._datasets is None:
            raise RuntimeError("call prepare_data() and setup() on the datamodule first")
        return self._datasets

    @property
    def datasets(self) -> DatasetDict:
        """The splits after setup: subsetted, ``labels`` and ``idx`` added, torch format."""
        return self._ready()

    @property
    def label_names(self) -> list[str]:
        self._ready()
        return list(self._meta["label_names"])

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def test_split_names(self) -> list[str]:
        return sorted((n for n in self._ready() if n.startswith("test")), key=split_order)

    @property
    def fingerprint(self) -> str:
        """Cache folder name plus subset sizes: equal fingerprints mean identical batches' contents."""
        sizes = ",".join(f"{name}={len(ds)}" for name, ds in self._ready().items())
        return f"{self.cache_path.name}:{sizes}"

    def split_summary(self) -> dict[str, Any]:
        """What to record in the run folder: split sizes, label counts, text hashes, subsets, dropped rows."""
        data = self._ready()
        stats = self._meta["source_stats"]
        return {
            **self._meta["split_summary"],
            "cache": self.cache_path.name,
            "source_stats": stats,
            "duplicates_dropped": stats.get("duplicates_dropped", 0),
            "max_train_samples": self.max_train_samples,
            "max_eval_samples": self.max_eval_samples,
            "subset_sizes": {name: len(ds) for name, ds in data.items()},
        }

    # ---- loaders -----------------------------------------------------------------------------------
    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        return seeded_loader(self._ready()[split], batch_size, self.collate, self.num_workers, shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(name, self.eval_batch_size) for name in self.test_split_names]
        return loaders if len(loaders) > 1 else loaders[0]

    def calibration_dataloader(self, num_samples: int, batch_size: int | None = None) -> DataLoader:
        """A seeded subset of ``num_samples`` training examples (all when the split is smaller), in a fixed
        order: what post-training techniques calibrate on."""
        check_positive("calibration.num_samples", num_samples)
        check_positive("calibration.batch_size", batch_size, optional=True)
        train = self._ready()["train"]
        subset = train.shuffle(seed=self.split_seed).select(range(min(num_samples, len(train))))
        return DataLoader(subset, batch_size=batch_size or self.batch_size, collate_fn=self.collate)

    def fixed_length_batch(self, batch_size: int, split: str = "test") -> dict[str, torch.Tensor]:
        """``batch_size`` examples padded to exactly ``max_length`` (examples repeat if the split is
        smaller): the fixed input shape latency measurements need."""
        check_positive("batch_size", batch_size)
        data = self._ready()
        if split not in data:
            raise ConfigError("split", split, f"one of {list(data)}")
        ds = data[split]
        rows = [ds[i % len(ds)] for i in range(batch_size)]
        batch = self.tokenizer.pad(
            rows, padding="max_length", max_length=self.max_length, return_tensors="pt"
        )
        return dict(batch)
