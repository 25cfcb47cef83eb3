"""Deterministic, stratified train/validation/test splits with a summary that proves which split was used.

Comparing compression methods is only fair on the same split: the summary records per-split sizes, label
counts and a hash of the sorted texts, so two runs can check they saw the same examples.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict
from sklearn.model_selection import train_test_split

from slimnlp.errors import ConfigError


def carve(labels: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split positions ``0..len(labels)-1`` into (kept, carved-out), ``0 < n_out < n`` carved, both sorted.

    Stratified by label when every class can appear on both sides (sklearn's requirement); otherwise a
    plain seeded split, reported by the returned flag.
    """
    counts = np.unique(labels, return_counts=True)[1]
    stratify = counts.min() >= 2 and min(n_out, len(labels) - n_out) >= len(counts)
    kept, out = train_test_split(
        np.arange(len(labels)), test_size=n_out, random_state=seed, stratify=labels if stratify else None
    )
    return np.sort(kept), np.sort(out), bool(stratify)


def text_hash(ds: Dataset) -> str:
    """Short sha256 of the split's sorted example texts (pairs joined by a tab): same hash, same examples."""
    texts = ds["text"]
    if "text_pair" in ds.column_names:
        texts = [f"{a}\t{b}" for a, b in zip(texts, ds["text_pair"], strict=True)]
    digest = hashlib.sha256("\n".join(sorted(texts)).encode("utf-8"))
    return digest.hexdigest()[:16]


def summarize(ds: Dataset) -> dict:
    """Size, label counts (by name, zeros included) and text hash of one split."""
    feature = ds.features["label"]
    names = feature.names if isinstance(feature, ClassLabel) else sorted(set(ds["label"]))
    counts = Counter(ds["label"])
    return {
        "size": len(ds),
        "label_counts": {str(name): counts.get(i, 0) for i, name in enumerate(names)},
        "sha256": text_hash(ds),
    }


def split_order(name: str) -> tuple[int, str]:
    """train, validation, test, then extra test sets alphabetically."""
    return ({"train": 0, "validation": 1, "test": 2}.get(name, 3), name)


def make_splits(
    data: DatasetDict, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> tuple[DatasetDict, dict]:
    """Fill in the validation/test splits a source lacks by carving them out of ``all`` or ``train``.

    Sizes are fractions of that pool (``all`` → 0.8/0.1/0.1 by default; ``train`` with a given test split
    → 10% of train becomes validation). Test is carved before validation, each with the same seed.
    """
    names = set(data)
    if "all" in names and len(names) > 1:
        raise ConfigError("data.source", sorted(names), "'all' cannot be combined with other splits")
    pool_name = "all" if "all" in names else "train"
    if pool_name not in names:
        raise ConfigError("data.source", sorted(names), "a source needs an 'all' or a 'train' split")
    pool = data[pool_name]
    labels = np.asarray(pool["label"])
    positions = np.arange(len(pool))
    out, carved, stratified = {}, [], True
    for split, fraction in (("test", test_fraction), ("validation", val_fraction)):
        if split in names:
            out[split] = data[split]
            continue
        n_out = round(len(pool) * fraction)
        if not 0 < n_out < len(positions):
            key = "data.test_fraction" if split == "test" else "data.val_fraction"
            room = len(positions) - 1
            allowed = f"gives {n_out} of {len(pool)} {pool_name} examples to {split}; need 1..{room}"
            raise ConfigError(key, fraction, allowed)
        kept, taken, strat = carve(labels[positions], n_out, seed)
        out[split] = pool.select(positions[taken])
        positions = positions[kept]
        carved.append(split)
        stratified = stratified and strat
    out["train"] = pool.select(positions) if carved else pool
    out.update({name: data[name] for name in names if name.startswith("test_")})
    result = DatasetDict({name: out[name] for name in sorted(out, key=split_order)})
    summary = {
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "carved_from": pool_name,
        "carved": carved,
        "stratified": stratified,
        "splits": {name: summarize(ds) for name, ds in result.items()},
    }
    return result, summary
