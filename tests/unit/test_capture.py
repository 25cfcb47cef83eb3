"""Q/K/V capture: scores reproduce the eager attentions, hooks never leak, losses run on captured tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertModel,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from slimnlp.errors import ConfigError
from slimnlp.losses.minilm import relation_kl
from slimnlp.losses.tinybert import attention_mse
from slimnlp.models.capture import attention_scores, capture_qkv

TEXTS = ["a short one", "this sentence is quite a bit longer than the first one"]
SMALL = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "max_position_embeddings": 128,
}


@pytest.fixture()
def batch(tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # the first text is padded
    return dict(enc)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _peaked(model: nn.Module) -> nn.Module:
    """Scale up the query/key weights so attention is far from uniform and a wrong score shows."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("query.weight", "key.weight")):
            nn.init.normal_(p, std=0.5)
    return model


def _student(tokenizer, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(2)
    config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=3, **{**SMALL, **overrides})
    return BertForSequenceClassification(config).eval()


def test_softmax_of_scores_equals_eager_attentions(tiny_bert, batch):
    model = _peaked(tiny_bert)
    model.set_attn_implementation("eager")
    with capture_qkv(model) as qkv:
        out = model(**batch, output_attentions=True)
    assert len(out.attentions) == 4 and sorted(qkv) == [0, 1, 2, 3]
    for i, attn in enumerate(out.attentions):
        q, k, v = qkv[i]
        assert q.shape == k.shape == v.shape == (2, 4, batch["input_ids"].shape[1], 8)
        probs = attention_scores(q, k, batch["attention_mask"]).softmax(-1)
        assert attn.max() > 0.5  # peaked, so the check is not trivially passed by near-uniform rows
        torch.testing.assert_close(probs, attn, atol=1e-5, rtol=0)


def test_capture_is_independent_of_attention_implementation(tiny_bert, batch):
    layers = [0, -1]
    with capture_qkv(tiny_bert, layers) as sdpa:  # default sdpa: no attentions, but projections still run
        tiny_bert(**batch)
    tiny_bert.set_attn_implementation("eager")
    with capture_qkv(tiny_bert, layers) as eager:
        tiny_bert(**batch)
    assert sorted(sdpa) == [-1, 0]
    for index in layers:
        for a, b in zip(sdpa[index], eager[index]):
            torch.testing.assert_close(a, b)


def test_hooks_removed_on_exit_and_on_error(tiny_bert, batch):
    assert _hook_count(tiny_bert) == 0
    with capture_qkv(tiny_bert, [1, 3]):
        assert _hook_count(tiny_bert) == 2 * 3
        tiny_bert(**batch)
    assert _hook_count(tiny_bert) == 0
    with pytest.raises(RuntimeError, match="boom"), capture_qkv(tiny_bert):
        assert _hook_count(tiny_bert) == 4 * 3
        raise RuntimeError("boom")
    assert _hook_count(tiny_bert) == 0


def test_layer_index_out_of_range(tiny_bert):
    with (
        pytest.raises(ValueError, match="layer 4 out of range for an encoder with 4 layers"),
        capture_qkv(tiny_bert, [4]),
    ):
        pass
    assert _hook_count(tiny_bert) == 0


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "projection"),
    [
        (RobertaConfig, RobertaForSequenceClassification, "attention.self.query"),
        (MPNetConfig, MPNetForSequenceClassification, "attention.attn.q"),
    ],
)
def test_roberta_and_mpnet_capture_the_query_projection(tokenizer, batch, config_cls, model_cls, projection):
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=tokenizer.vocab_size, num_labels=3, **SMALL)).eval()
    with capture_qkv(model, [1]) as qkv:
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    layer_input = out.hidden_states[1]  # the input of encoder layer 1
    expected = model.base_model.encoder.layer[1].get_submodule(projection)(layer_input)
    expected = expected.view(*layer_input.shape[:2], 4, 4).transpose(1, 2)
    torch.testing.assert_close(qkv[1].query, expected)


def test_unsupported_architectures_raise_config_error(tokenizer):
    distil = DistilBertModel(
        DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    )
    with pytest.raises(ConfigError, match="no encoder.layer"), capture_qkv(distil):
        pass

    odd = nn.Module()
    odd.encoder = nn.Module()
    odd.encoder.layer = nn.ModuleList([nn.Linear(4, 4)])
    with pytest.raises(ConfigError, match="unsupported encoder layer"), capture_qkv(odd):
        pass


def test_minilmv2_relations_across_different_head_counts(tiny_bert, tokenizer, batch):
    teacher = tiny_bert  # 4 heads × 8 = 32 wide
    student = _student(tokenizer, num_attention_heads=2)  # 2 heads × 8 = 16 wide
    with torch.no_grad(), capture_qkv(teacher, [-1]) as qkv_T:
        teacher(**batch)
    with capture_qkv(student, [-1]) as qkv_S:
        student(**batch)
    loss = sum(
        relation_kl(s, t, 4, batch["attention_mask"]) for s, t in zip(qkv_S[-1], qkv_T[-1])
    )  # Q-Q, K-K, V-V
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    self_attn = student.bert.encoder.layer[-1].attention.self
    assert all(m.weight.grad is not None for m in (self_attn.query, self_attn.key, self_attn.value))
    assert all(p.grad is None for p in teacher.parameters())


def test_attention_mse_matches_tinybert_reference_on_captured_scores(tiny_bert, tokenizer, batch):
    student = _student(tokenizer)  # 4 heads, like the teacher
    with torch.no_grad(), capture_qkv(_peaked(tiny_bert), [-1]) as qkv_T:
        tiny_bert(**batch)
    with capture_qkv(student, [-1]) as qkv_S:
        student(**batch)
    mask = batch["attention_mask"]
    scores_S = attention_scores(qkv_S[-1].query, qkv_S[-1].key, mask)
    scores_T = attention_scores(qkv_T[-1].query, qkv_T[-1].key, mask)
    # reference task_distill.py: torch.where(att <= -1e2, 0, att) on both, then MSELoss()
    reference = F.mse_loss(
        torch.where(scores_S <= -1e2, torch.zeros_like(scores_S), scores_S),
        torch.where(scores_T <= -1e2, torch.zeros_like(scores_T), scores_T),
    )
    torch.testing.assert_close(attention_mse(scores_S, scores_T, mask), reference)
