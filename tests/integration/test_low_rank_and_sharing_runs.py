"""Low-rank factorization and layer sharing through train.py on the tiny setup: the factorize stage, then
recovery; smaller artifacts that reload as factorized (or shared) layers; one-line errors before training."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_tiny

from slimnlp.artifacts import load_student
from slimnlp.errors import ConfigError
from slimnlp.modules.factorized import FactorizedLinear

ENCODER_LINEARS = 4 * 6  # the tiny teacher's 4 layers: Q, K, V, attention output, FFN in and out


def factorized(student_dir) -> list[FactorizedLinear]:
    return [m for m in load_student(student_dir).modules() if isinstance(m, FactorizedLinear)]


def test_svd_factorizes_then_recovers_with_kd(tiny_setup):
    results = run_tiny(tiny_setup, "svd", "technique=svd", "student=4L", "student.init_from=finetuned",
                       "technique.rank_ratio=0.25")
    run_dir = tiny_setup[0] / "outputs" / "runs" / "svd"
    m = results["metrics"]
    layers = factorized(run_dir / "student")
    assert len(layers) == ENCODER_LINEARS == m["compress/factorized_layers"]
    assert {layer.rank for layer in layers} == {8}  # a quarter of every tiny Linear's full rank (32)
    # attention 32x32 -> 8·64 weights, FFN 32x64 -> 8·96: 4·(4·512 + 2·768) of 4·(4·1024 + 2·2048)
    assert m["compress/factorized_weight_fraction"] == pytest.approx((4 * 512 + 2 * 768) / (4 * 1024 + 2 * 2048))
    assert m["eff/params"] < m["teacher/eff/params"] and m["eff/flops"] < m["teacher/eff/flops"]
    before = json.loads((run_dir / "stages" / "factorize" / "done.json").read_text())
    assert before["steps"] == 0 and "val/acc" in before["metrics"]  # validated before any recovery
    assert m["train/optimizer_steps"] > 0


def test_drone_without_recovery_is_post_training(tiny_setup):
    results = run_tiny(tiny_setup, "drone", "technique=drone", "student=4L", "student.init_from=finetuned",
                       "technique.rank=8", "technique.rank_ratio=null", "technique.recover=none")
    m = results["metrics"]
    assert m["train/optimizer_steps"] == 0 and m["compress/factorized_layers"] == ENCODER_LINEARS
    layers = factorized(tiny_setup[0] / "outputs" / "runs" / "drone" / "student")
    ids = torch.randint(1000, 2000, (2, 9))
    assert {layer.rank for layer in layers} == {8}
    with torch.no_grad():
        logits = load_student(tiny_setup[0] / "outputs" / "runs" / "drone" / "student")(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_a_rank_that_saves_nothing_keeps_the_layer_dense(tiny_setup):
    results = run_tiny(tiny_setup, "svd_energy", "technique=svd", "student=4L", "student.init_from=finetuned",
                       "technique.rank_ratio=null", "technique.energy=1.0", "technique.recover=none")
    assert results["metrics"]["compress/factorized_layers"] == 0
    assert results["metrics"]["eff/params"] == results["metrics"]["teacher/eff/params"]


def test_embedding_factorization_shrinks_the_table_and_recovers(tiny_setup):
    from slimnlp.modules.factorized import FactorizedEmbedding

    results = run_tiny(tiny_setup, "emb", "technique=embedding_factorization", "student=4L",
                       "student.init_from=finetuned", "technique.rank=8")
    m = results["metrics"]
    student = load_student(tiny_setup[0] / "outputs" / "runs" / "emb" / "student")
    table = student.bert.embeddings.word_embeddings
    assert isinstance(table, FactorizedEmbedding) and table.rank == 8 == m["compress/embedding_rank"]
    vocab = table.num_embeddings
    assert m["teacher/eff/params"] - m["eff/params"] == vocab * (32 - 8) - 8 * 32
    assert m["eff/disk_bytes"] < m["teacher/eff/disk_bytes"] and m["train/optimizer_steps"] > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["technique=svd", "technique.rank=1000", "technique.rank_ratio=null"], r"technique\.rank.*1000.*at most 32"),
     (["technique=drone", "technique.rank=4"], r"exactly one"),
     (["technique=svd", "technique.recover=distill"], r"technique\.recover.*distill"),
     (["technique=drone", "technique.damping=-1"], r"technique\.damping.*-1"),
     (["technique=svd", "technique.targets=[classifier]"], r"technique\.targets.*classifier"),
     (["technique=embedding_factorization", "technique.rank=32"], r"technique\.rank.*32.*below student\.hidden_size")],
)
def test_bad_low_rank_settings_fail_in_one_line_before_training(tiny_setup, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        run_tiny(tiny_setup, "low_rank_bad", *overrides, "student=4L")
    assert "\n" not in str(err.value)


def test_layer_sharing_saves_bytes_not_flops(tiny_setup):
    results = run_tiny(tiny_setup, "share", "technique=layer_sharing", "student=4L", "technique.strategy=cycle",
                       "technique.unique_layers=2")
    m = results["metrics"]
    assert m["compress/unique_layers"] == 2 and m["compress/layer_positions"] == 4
    layers = load_student(tiny_setup[0] / "outputs" / "runs" / "share" / "student").bert.encoder.layer
    assert layers[0] is layers[2] and layers[1] is layers[3]
    layer_params = sum(p.numel() for p in layers[0].parameters())
    assert m["teacher/eff/params"] - m["eff/params"] == 2 * layer_params
    assert m["eff/flops"] == m["teacher/eff/flops"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["technique.strategy=cycle", "technique.unique_layers=3"], r"technique\.unique_layers.*3.*divisor of student"),
     (["technique.strategy=all", "technique.unique_layers=2"], r"technique\.unique_layers.*2.*null for all"),
     (["technique.strategy=ring"], r"technique\.strategy.*ring")],
)
def test_bad_sharing_fails_in_one_line(tiny_setup, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        run_tiny(tiny_setup, "share_bad", "technique=layer_sharing", "student=4L", *overrides)
    assert "\n" not in str(err.value)
