"""The artifact contract: students of any shape round-trip save_student -> load_student exactly."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForSequenceClassification

import slimnlp
import slimnlp.modules
from model_surgery import prune_heads as _prune_heads
from model_surgery import slice_ffn as _slice_ffn
from slimnlp import artifacts
from slimnlp.artifacts import MANIFEST_NAME, WEIGHTS_NAME, artifact_bytes, load_student, save_student
from slimnlp.errors import ConfigError
from slimnlp.models import structure
from slimnlp.models.students import layer_subset
from slimnlp.modules.factorized import FactorizedLinear

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# ---------------------------------------------------------------- helpers


@pytest.fixture()
def tiny_bert(tiny_bert):
    """conftest's tiny BERT with weights large enough for logits of order 1 (HF's init gives ~0.01, where a
    1e-5 tolerance would hardly test anything)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in tiny_bert.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return tiny_bert


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**{k: batch[k] for k in INPUT_KEYS}).logits


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key, tensor in sa.items():
        assert tensor.dtype == sb[key].dtype, key
        assert torch.equal(tensor, sb[key]), key


def _round_trip(model, folder, batch):
    """save -> load: same logits (1e-5), same tensors, and saving the reload gives the same bytes."""
    saved = save_student(model, folder / "first")
    reloaded = load_student(saved)
    assert not reloaded.training
    assert (_logits(model, batch) - _logits(reloaded, batch)).abs().max().item() <= 1e-5
    _assert_same_state(model, reloaded)
    again = save_student(reloaded, folder / "second")
    assert artifact_bytes(again) == artifact_bytes(saved)
    return saved, reloaded


def _manifest(folder) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def _file_keys(folder) -> list[str]:
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        return list(f.keys())


# ---------------------------------------------------------------- round trips


def test_head_pruned_model_round_trips(tiny_bert, tiny_batch, tmp_path):
    before = _logits(tiny_bert, tiny_batch)
    _prune_heads(tiny_bert, 0, [1, 3])
    _prune_heads(tiny_bert, 2, [0])
    assert (before - _logits(tiny_bert, tiny_batch)).abs().max() > 1e-2  # pruning changed the model
    saved, reloaded = _round_trip(tiny_bert, tmp_path, tiny_batch)

    manifest = _manifest(saved)
    assert manifest["shared"] == {}
    expected = {
        f"bert.encoder.layer.{i}.attention.{name}": (rows, cols)
        for i, width in ((0, 16), (2, 24))
        for name, rows, cols in (
            ("self.query", width, 32),
            ("self.key", width, 32),
            ("self.value", width, 32),
            ("output.dense", 32, width),
        )
    }
    assert {
        path: (e["spec"]["out_features"], e["spec"]["in_features"])
        for path, e in manifest["replacements"].items()
    } == expected
    assert {e["kind"] for e in manifest["replacements"].values()} == {"linear"}
    heads = [(a.self.num_attention_heads, a.self.all_head_size) for a in _attentions(reloaded)]
    assert heads == [(2, 16), (4, 32), (3, 24), (4, 32)]
    eager = load_student(saved, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    assert (_logits(tiny_bert, tiny_batch) - _logits(eager, tiny_batch)).abs().max().item() <= 1e-5
    (tmp_path / "plain_mkdir").mkdir()  # the folder gets the umask's mode, not mkdtemp's private 0700
    assert saved.stat().st_mode & 0o777 == (tmp_path / "plain_mkdir").stat().st_mode & 0o777


def _attentions(model):
    return [layer.attention for layer in structure.encoder_layers(model)]


def test_stale_head_counts_do_not_matter_for_bert_and_are_made_consistent_on_reload(
    tiny_bert, tiny_batch, tmp_path
):
    """BERT's forward reads the head count from the projection shape; the reload derives the attributes
    (MPNet/DeBERTa forwards do read them) from the reloaded query shape."""
    _prune_heads(tiny_bert, 1, [0, 1, 2], update_counts=False)
    assert _attentions(tiny_bert)[1].self.num_attention_heads == 4  # stale on purpose
    _, reloaded = _round_trip(tiny_bert, tmp_path, tiny_batch)  # same logits although the attributes differ
    attention = _attentions(reloaded)[1].self
    assert (attention.num_attention_heads, attention.all_head_size) == (1, 8)


def test_ffn_sliced_model_round_trips(tiny_bert, tiny_batch, tmp_path):
    _slice_ffn(tiny_bert, 3, keep=24)
    saved, reloaded = _round_trip(tiny_bert, tmp_path, tiny_batch)
    specs = {p: e["spec"] for p, e in _manifest(saved)["replacements"].items()}
    assert specs == {
        "bert.encoder.layer.3.intermediate.dense": {"in_features": 32, "out_features": 24, "bias": True},
        "bert.encoder.layer.3.output.dense": {"in_features": 24, "out_features": 32, "bias": True},
    }
    assert structure.encoder_layers(reloaded)[3].intermediate.dense.weight.shape == (24, 32)


def test_factorized_linear_model_round_trips(tiny_bert, tiny_batch, tmp_path):
    block = structure.encoder_layers(tiny_bert)[1]
    block.intermediate.dense = FactorizedLinear.from_linear(block.intermediate.dense, rank=6)
    saved, reloaded = _round_trip(tiny_bert, tmp_path, tiny_batch)
    assert _manifest(saved)["replacements"] == {
        "bert.encoder.layer.1.intermediate.dense": {
            "kind": "factorized_linear",
            "module": "slimnlp.modules.factorized",
            "spec": {"in_features": 32, "out_features": 64, "rank": 6, "bias": True},
        }
    }
    rebuilt = structure.encoder_layers(reloaded)[1].intermediate.dense
    assert isinstance(rebuilt, FactorizedLinear) and rebuilt.A.weight.shape == (6, 32)


def test_loading_imports_the_module_that_registers_a_kind(tiny_bert, tiny_batch, tmp_path, monkeypatch):
    """A fresh process has not imported slimnlp.modules.factorized: the manifest's module is imported."""
    block = structure.encoder_layers(tiny_bert)[0]
    block.output.dense = FactorizedLinear.from_linear(block.output.dense, rank=4)
    saved = save_student(tiny_bert, tmp_path / "art")
    monkeypatch.setattr(artifacts, "_KINDS", {k: v for k, v in artifacts._KINDS.items() if k == "linear"})
    monkeypatch.setattr(artifacts, "_KIND_OF_CLASS", {nn.Linear: "linear"})
    monkeypatch.delitem(sys.modules, "slimnlp.modules.factorized")
    monkeypatch.delattr(slimnlp.modules, "factorized")
    reloaded = load_student(saved)
    assert "factorized_linear" in artifacts._KINDS
    assert type(structure.encoder_layers(reloaded)[0].output.dense).__name__ == "FactorizedLinear"
    assert (_logits(tiny_bert, tiny_batch) - _logits(reloaded, tiny_batch)).abs().max().item() <= 1e-5


def test_shared_layers_are_stored_once_and_stay_shared(tiny_bert, tiny_batch, tmp_path):
    unshared = save_student(tiny_bert, tmp_path / "unshared")
    layers = structure.encoder_layers(tiny_bert)
    layer_bytes = sum(t.numel() * t.element_size() for t in layers[2].state_dict().values())
    layers[2] = layers[1]
    saved, reloaded = _round_trip(tiny_bert, tmp_path, tiny_batch)

    assert _manifest(saved) == {
        "format": "slimnlp-artifact",
        "version": 1,
        "weights": WEIGHTS_NAME,
        "replacements": {},
        "shared": {"bert.encoder.layer.2": "bert.encoder.layer.1"},
    }
    keys = _file_keys(saved)
    assert not [k for k in keys if k.startswith("bert.encoder.layer.2.")]
    assert len([k for k in keys if k.startswith("bert.encoder.layer.1.")]) == 16
    saved_size = os.path.getsize(saved / WEIGHTS_NAME)
    unshared_size = os.path.getsize(unshared / WEIGHTS_NAME)
    assert abs((unshared_size - saved_size) - layer_bytes) <= 0.1 * layer_bytes  # minus one layer (+ header)
    reloaded_layers = structure.encoder_layers(reloaded)
    assert reloaded_layers[1] is reloaded_layers[2]
    assert reloaded_layers[0] is not reloaded_layers[1] and reloaded_layers[2] is not reloaded_layers[3]


def test_shared_parameter_stays_one_parameter(tiny_bert, tiny_batch, tmp_path):
    layers = structure.encoder_layers(tiny_bert)
    layers[3].attention.self.key.weight = layers[0].attention.self.query.weight
    saved, reloaded = _round_trip(tiny_bert, tmp_path, tiny_batch)
    assert _manifest(saved)["shared"] == {
        "bert.encoder.layer.3.attention.self.key.weight": "bert.encoder.layer.0.attention.self.query.weight"
    }
    assert "bert.encoder.layer.3.attention.self.key.weight" not in _file_keys(saved)
    again = structure.encoder_layers(reloaded)
    assert again[3].attention.self.key.weight is again[0].attention.self.query.weight


def test_alias_keys_in_the_weights_file_fail_clearly(tiny_bert, tmp_path):
    layers = structure.encoder_layers(tiny_bert)
    layers[2] = layers[1]
    saved = save_student(tiny_bert, tmp_path / "art")
    state = {k: v.clone() for k, v in tiny_bert.state_dict().items()}  # every key, aliases included
    save_file(state, str(saved / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"shared aliases.*bert\.encoder\.layer\.2\."):
        load_student(saved)


def test_mixed_dtypes_round_trip(tiny_bert, tiny_batch, tmp_path):
    _prune_heads(tiny_bert, 0, [2])
    tiny_bert.to(torch.bfloat16)
    tiny_bert.classifier.float()  # one fp32 module in a bf16 model
    saved = save_student(tiny_bert, tmp_path / "art")
    reloaded = load_student(saved)
    assert reloaded.classifier.weight.dtype == torch.float32 and reloaded.dtype == torch.bfloat16
    _assert_same_state(tiny_bert, reloaded)


def test_layer_cut_is_a_plain_hf_checkpoint(tiny_bert, tiny_batch, tokenizer, tmp_path):
    student = layer_subset(tiny_bert, 3, 2).eval()
    run = tmp_path / "run"
    saved = save_student(student, run / "student", tokenizer=tokenizer)
    assert not (saved / MANIFEST_NAME).exists()
    plain = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    assert torch.equal(_logits(student, tiny_batch), _logits(plain, tiny_batch))
    via_run_folder = slimnlp.load_student(run)  # a run folder resolves to its student/
    assert torch.equal(_logits(student, tiny_batch), _logits(via_run_folder, tiny_batch))
    _assert_same_state(student, via_run_folder)


# ---------------------------------------------------------------- FactorizedLinear


def test_factorized_linear_is_exact_at_full_rank():
    torch.manual_seed(1)
    linear = nn.Linear(24, 40)
    x = torch.randn(5, 24)
    factorized = FactorizedLinear.from_linear(linear, rank=24)
    assert (factorized(x) - linear(x)).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in factorized.parameters()) == 24 * 24 + 24 * 40 + 40


def test_factorized_linear_error_is_the_svd_tail():
    torch.manual_seed(2)
    linear = nn.Linear(32, 20, bias=False)
    singular = torch.linalg.svdvals(linear.weight.detach())
    for rank in (1, 5, 12):
        factorized = FactorizedLinear.from_linear(linear, rank=rank)
        assert factorized.B.bias is None
        error = torch.linalg.matrix_norm(linear.weight - factorized.B.weight @ factorized.A.weight).item()
        tail = singular[rank:].square().sum().sqrt().item()
        assert error == pytest.approx(tail, rel=1e-4, abs=1e-6)
    with pytest.raises(ConfigError, match=r"rank=21"):
        FactorizedLinear.from_linear(linear, rank=21)


# ---------------------------------------------------------------- sizes, errors, crash safety


def test_artifact_bytes_counts_every_file(tiny_bert, tokenizer, tmp_path):
    _prune_heads(tiny_bert, 0, [0])
    saved = save_student(tiny_bert, tmp_path / "art", tokenizer=tokenizer)
    names = {p.name for p in saved.iterdir()}
    assert {MANIFEST_NAME, WEIGHTS_NAME, "config.json", "tokenizer_config.json"} <= names
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(saved) for f in files)
    assert artifact_bytes(saved) == total
    assert total > os.path.getsize(saved / WEIGHTS_NAME) + os.path.getsize(saved / MANIFEST_NAME)


def test_unknown_kind_is_a_one_line_config_error(tiny_bert, tmp_path):
    _prune_heads(tiny_bert, 0, [0])
    saved = save_student(tiny_bert, tmp_path / "art")
    manifest = _manifest(saved)
    next(iter(manifest["replacements"].values()))["kind"] = "quantum_linear"
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError) as err:
        load_student(saved)
    message = str(err.value)
    assert "\n" not in message and "quantum_linear" in message
    assert "known kinds: " in message and "factorized_linear" in message and ", linear" in message


def test_unregistered_module_fails_at_save_time(tiny_bert, tmp_path):
    structure.encoder_layers(tiny_bert)[0].output.dense = nn.Identity()
    with pytest.raises(ConfigError, match=r"bert\.encoder\.layer\.0\.output\.dense.*no artifact kind"):
        save_student(tiny_bert, tmp_path / "art")
    assert not list(tmp_path.iterdir())


def test_failed_save_leaves_no_folder(tiny_bert, tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, folder):
            (folder / "vocab.txt").write_text("half")
            raise OSError("disk full")

    _prune_heads(tiny_bert, 0, [0])
    with pytest.raises(OSError, match="disk full"):
        save_student(tiny_bert, tmp_path / "art", tokenizer=BrokenTokenizer())
    assert not list(tmp_path.iterdir())  # neither the folder nor a temporary sibling


def test_resave_replaces_an_earlier_artifact_but_not_other_folders(tiny_bert, tmp_path):
    _prune_heads(tiny_bert, 0, [0])
    saved = save_student(tiny_bert, tmp_path / "art")
    student = layer_subset(tiny_bert, 3, 2)  # plain now: the old manifest must not survive
    save_student(student, saved)
    assert not (saved / MANIFEST_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.log").write_text("keep me")
    with pytest.raises(ConfigError, match="folder="):
        save_student(student, tmp_path / "logs")
    assert (tmp_path / "logs" / "train.log").read_text() == "keep me"
