"""Splits are what make two runs comparable: they must be seeded, stratified, disjoint and sized as asked."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import DatasetDict

from slimnlp.data.sources import build_dataset
from slimnlp.data.splits import carve, make_splits, text_hash
from slimnlp.errors import ConfigError

NAMES = ["neg", "neu", "pos"]


def corpus(n: int = 1000, weights=(0.5, 0.3, 0.2), seed: int = 0) -> DatasetDict:
    """Imbalanced labels, unique texts that encode their position."""
    labels = np.random.default_rng(seed).choice(3, size=n, p=weights).tolist()
    return DatasetDict({"all": build_dataset([f"example {i}" for i in range(n)], labels, NAMES)})


def shares(labels) -> np.ndarray:
    counts = Counter(labels)
    return np.array([counts[i] for i in range(3)]) / len(labels)


def test_same_seed_same_split_different_seed_different_split():
    data = corpus()
    a, summary_a = make_splits(data, seed=1)
    b, summary_b = make_splits(data, seed=1)
    c, summary_c = make_splits(data, seed=2)
    for split in ("train", "validation", "test"):
        assert a[split]["text"] == b[split]["text"]
        assert summary_a["splits"][split]["sha256"] == summary_b["splits"][split]["sha256"]
        assert summary_a["splits"][split]["sha256"] != summary_c["splits"][split]["sha256"]
    assert set(a["test"]["text"]) != set(c["test"]["text"])


def test_fractions_are_respected():
    splits, summary = make_splits(corpus(1000), val_fraction=0.15, test_fraction=0.05, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "validation": 150, "test": 50}
    assert list(splits) == ["train", "validation", "test"]
    assert summary["splits"]["validation"]["size"] == 150
    assert summary["carved"] == ["test", "validation"] and summary["stratified"] is True


def test_splits_are_disjoint_and_cover_the_corpus():
    data = corpus(997)
    splits, _ = make_splits(data, seed=3)
    texts = [set(splits[s]["text"]) for s in ("train", "validation", "test")]
    assert sum(len(t) for t in texts) == 997
    assert set().union(*texts) == set(data["all"]["text"])
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_stratification_keeps_label_shares_within_one_point():
    data = corpus(2000, weights=(0.7, 0.2, 0.1))
    overall = shares(data["all"]["label"])
    splits, summary = make_splits(data, seed=5)
    for split, ds in splits.items():
        assert np.abs(shares(ds["label"]) - overall).max() < 0.01, split
        counts = summary["splits"][split]["label_counts"]
        assert list(counts) == NAMES and sum(counts.values()) == len(ds)


def test_given_test_split_is_kept_and_validation_comes_from_train():
    full = corpus(600)
    data = DatasetDict({"train": full["all"].select(range(500)), "test": full["all"].select(range(500, 600))})
    splits, summary = make_splits(data, val_fraction=0.2, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 400, "validation": 100, "test": 100}
    assert splits["test"]["text"] == data["test"]["text"]
    assert set(splits["validation"]["text"]) <= set(data["train"]["text"])
    assert summary["carved_from"] == "train" and summary["carved"] == ["validation"]


def test_hash_covers_text_pairs():
    a = build_dataset(["x", "y"], [0, 1], NAMES[:2], text_pairs=["p", "q"])
    b = build_dataset(["x", "y"], [0, 1], NAMES[:2], text_pairs=["p", "r"])
    assert text_hash(a) != text_hash(b)
    assert text_hash(a) == text_hash(a.select([1, 0]))  # order-free


def test_tiny_class_falls_back_to_a_plain_seeded_split():
    kept, out, stratified = carve(np.array([0] * 20 + [1]), n_out=4, seed=0)
    assert not stratified
    assert len(out) == 4 and len(kept) == 17 and not set(kept) & set(out)


def test_fraction_too_small_for_the_corpus_is_a_config_error():
    with pytest.raises(ConfigError, match="data.test_fraction"):
        make_splits(corpus(20), test_fraction=0.01)


def test_all_cannot_be_mixed_with_other_splits():
    data = corpus(50)
    with pytest.raises(ConfigError, match="'all' cannot be combined"):
        make_splits(DatasetDict({"all": data["all"], "test": data["all"]}))
