"""General distillation through the runner on the tiny setup: unlabelled text (``data=text_corpus``) from the
pretrained teacher, the held-out loss falls, the student's encoder is saved as a plain HF checkpoint, and the task
stages (``technique=tinybert student=path``) start from it; bad combinations fail in one line before training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import compose_run_config, run_tiny, tiny_overrides
from transformers import AutoModel

from slimnlp.errors import ConfigError
from slimnlp.models.loading import load_tokenizer

SMALL_STUDENT = ["student=tinybert_4L", "student.num_layers=2", "student.hidden_size=16",
                 "student.num_attention_heads=4", "student.intermediate_size=32"]  # its own shape, random init


def run_general(tiny_setup, name: str, *extra: str) -> dict:
    from slimnlp.train import run

    root, corpus, teacher = tiny_setup
    base = [o for o in tiny_overrides(root, corpus, teacher) if not o.startswith("data")]
    text = ["data=text_corpus", "data.corpora=[]", f"data.files=[{corpus}]", "data.max_length=16",
            "data.batch_size=16", "data.val_samples=30", "technique=general_distill"]
    return run(compose_run_config([*base, *text, *extra], root / "outputs" / "runs" / name))


@pytest.mark.parametrize("objective", ["tinybert", "minilm_v2"])
def test_general_distillation_lowers_the_held_out_loss_and_saves_a_plain_encoder_the_task_stages_start_from(
    tiny_setup, objective
):
    result = run_general(tiny_setup, f"general_{objective}", *SMALL_STUDENT, f"technique.objective={objective}",
                         "technique.relation_heads=4", "technique.lr=2e-3", "trainer.max_epochs=4")
    m, run_dir = result["metrics"], result["run_dir"]
    parts = ("emb", "hidden", "attn") if objective == "tinybert" else ("qq", "kk", "vv")
    assert m["val/loss"] == pytest.approx(sum(m[f"val/loss/{p}"] for p in parts), rel=1e-4)
    assert m["train/optimizer_steps"] == 4 * 17  # 270 training texts (300 - 30 held out) in batches of 16
    assert not any(k.startswith(("test/", "teacher/", "fidelity/")) for k in m)  # no task to test on
    logged = pd.read_csv(f"{run_dir}/csv/metrics.csv")
    per_epoch = logged.dropna(subset=["val/loss"])["val/loss"].tolist()
    assert len(per_epoch) == 4 and per_epoch[-1] < 0.9 * per_epoch[0]  # the distillation loss falls on held-out text
    assert m["val/loss"] == pytest.approx(min(per_epoch), rel=1e-5)  # the lowest is the one kept

    student = f"{run_dir}/student"
    config = json.loads(Path(student, "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["hidden_size"] == 16  # a plain encoder, no head
    encoder, info = AutoModel.from_pretrained(student, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = load_tokenizer(student)(["the best phone", "an awful tuesday"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(encoder.eval()(**batch).last_hidden_state).all()

    tasked = run_tiny(tiny_setup, f"tinybert_after_{objective}", "technique=tinybert", "student=path",
                      f"student.path={student}", "trainer.max_epochs=2")
    head = 16 * 3 + 3  # a new 3-class classifier on the general student's 16-wide pooled output
    assert tasked["metrics"]["eff/params"] == sum(p.numel() for p in encoder.parameters()) + head
    assert tasked["metrics"]["train/optimizer_steps"] > 0 and "test/acc" in tasked["metrics"]


@pytest.mark.parametrize("overrides, pattern", [
    ([*SMALL_STUDENT, "technique.objective=mlm"], r"technique\.objective='mlm' .*tinybert or minilm_v2"),
    ([*SMALL_STUDENT, "technique.objective=minilm_v2", "technique.layer_map=[0,1]"], r"technique\.layer_map=.*null"),
    ([*SMALL_STUDENT, "data.corpora=[]", "data.files=[]"], r"data\.corpora=.*data options .*or data\.files"),
    ([*SMALL_STUDENT, "data.corpora=[no_such_data]"], r"data\.corpora='no_such_data' .*tweet_sentiment"),
    (["student=2L", "student.init_from=finetuned"], r"student\.init_from='finetuned' .*pretrained"),
])
def test_bad_general_distillation_input_fails_in_one_line_before_training(tiny_setup, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        run_general(tiny_setup, "general_bad", *overrides)
    assert "\n" not in str(err.value)
    assert not (tiny_setup[0] / "outputs" / "runs" / "general_bad" / "checkpoints").exists()


def test_a_task_technique_on_unlabelled_text_and_general_distillation_on_a_task_fail_in_one_line(tiny_setup):
    with pytest.raises(ConfigError, match=r"data='text_corpus' .*labelled data: technique kd") as err:
        run_general(tiny_setup, "kd_on_text", "technique=kd")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"data=.*data=text_corpus: technique general_distill") as err:
        run_tiny(tiny_setup, "general_on_task", "technique=general_distill")
    assert "\n" not in str(err.value)
