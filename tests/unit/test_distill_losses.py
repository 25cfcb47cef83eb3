"""Distillation losses: zero at S == T, hand-computed golden values, masking, gradient flow, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from slimnlp.losses.distilbert import cosine_hidden_loss
from slimnlp.losses.kd import soft_cross_entropy
from slimnlp.losses.minilm import attention_kl, relation_kl, value_relation_kl
from slimnlp.losses.mixkd import mixup, sample_mixup_lambda
from slimnlp.losses.pkd import pkd_loss
from slimnlp.losses.tinybert import attention_mse, embedding_mse, hidden_mse

MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # second example has two padding tokens


def _probs(batch=2, heads=3, seq=5, mask=MASK, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, seq, seq, generator=g) * 3
    return scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min).softmax(-1)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bernoulli_kl(p: float) -> float:
    """KL([p, 1−p] ‖ [½, ½]), the row every relation golden value below reduces to."""
    return p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# --- every loss: scalar, gradient to the student only -------------------------------------------------

CASES = {
    "pkd": (lambda: ([_rand(2, 8)], [_rand(2, 8, seed=1)]), lambda S, T: pkd_loss(S, T)),
    "hidden_mse": (lambda: (_rand(2, 5, 8), _rand(2, 5, 8, seed=1)), hidden_mse),
    "embedding_mse": (lambda: (_rand(2, 5, 8), _rand(2, 5, 8, seed=1)), embedding_mse),
    "attention_mse": (
        lambda: (_rand(2, 3, 5, 5), _rand(2, 3, 5, 5, seed=1)),
        lambda S, T: attention_mse(S, T, MASK),
    ),
    "attention_kl": (lambda: (_probs(), _probs(seed=1)), lambda S, T: attention_kl(S, T, MASK)),
    "value_relation_kl": (
        lambda: (_rand(2, 3, 5, 4), _rand(2, 3, 5, 8, seed=1)),
        lambda S, T: value_relation_kl(S, T, MASK),
    ),
    "relation_kl": (
        lambda: (_rand(2, 2, 5, 6), _rand(2, 4, 5, 6, seed=1)),
        lambda S, T: relation_kl(S, T, 3, MASK),
    ),
    "cosine_hidden": (
        lambda: (_rand(2, 5, 8), _rand(2, 5, 8, seed=1)),
        lambda S, T: cosine_hidden_loss(S, T, MASK),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scalar_and_gradient_reaches_student_only(name):
    make, loss_fn = CASES[name]
    S, T = make()
    S = [s.requires_grad_() for s in S] if isinstance(S, list) else S.requires_grad_()
    T = [t.requires_grad_() for t in T] if isinstance(T, list) else T.requires_grad_()  # detached inside
    loss = loss_fn(S, T)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for s in S if isinstance(S, list) else [S]:
        assert s.grad is not None and s.grad.abs().sum() > 0
    for t in T if isinstance(T, list) else [T]:
        assert t.grad is None


@pytest.mark.parametrize("name", list(CASES))
def test_zero_when_student_equals_teacher(name):
    make, loss_fn = CASES[name]
    _, T = make()
    S = [t.clone() for t in T] if isinstance(T, list) else T.clone()
    assert loss_fn(S, T).item() == pytest.approx(0.0, abs=1e-6)


# --- PKD -----------------------------------------------------------------------------------------------


def test_pkd_golden_value():
    # layer 1: [3,4]/5 = [.6,.8] vs [1,0] -> (.4² + .8²) = 0.8; [0,2] vs [0,5] -> both [0,1] -> 0; batch mean 0.4
    # layer 2: [1,0] vs [0,1] -> 1 + 1 = 2; [1,1] vs [1,1] -> 0; batch mean 1.0. Sum over layers: 1.4
    cls_S = [torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])]
    cls_T = [torch.tensor([[1.0, 0.0], [0.0, 5.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])]
    assert pkd_loss(cls_S, cls_T).item() == pytest.approx(1.4, abs=1e-6)


def test_pkd_only_direction_matters():
    h = _rand(4, 8)
    assert pkd_loss([3.0 * h], [h]).item() == pytest.approx(0.0, abs=1e-6)


def test_pkd_errors():
    with pytest.raises(ValueError, match="number of student and teacher layers"):
        pkd_loss([_rand(2, 8)], [_rand(2, 8), _rand(2, 8)])
    with pytest.raises(ValueError, match=r"layer pair 0.*\(2, 4\).*\(2, 8\)"):
        pkd_loss([_rand(2, 4)], [_rand(2, 8)])


# --- TinyBERT ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", [hidden_mse, embedding_mse])
def test_tinybert_mse_golden_value(loss_fn):
    # (1² + 2² + 3² + 4²) / 4 elements = 7.5
    assert loss_fn(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.zeros(1, 2, 2)).item() == pytest.approx(
        7.5
    )


def test_hidden_mse_projects_the_student():
    proj = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # [1, 2] @ Wᵀ = [1, 2, 3] vs teacher [1, 2, 0] -> (0 + 0 + 9) / 3 = 3
    loss = hidden_mse(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[1.0, 2.0, 0.0]]]), proj=proj)
    assert loss.item() == pytest.approx(3.0)
    loss.backward()
    assert proj.weight.grad is not None  # W_h is learned with the student


def test_hidden_mse_width_mismatch_asks_for_proj():
    with pytest.raises(ValueError, match="pass proj=nn.Linear"):
        hidden_mse(_rand(2, 5, 4), _rand(2, 5, 8))


def test_attention_mse_golden_value_follows_reference_masking():
    # mask [1, 0]: key column 1 is zeroed in both (reference: where(att <= -1e2, 0, att)), so 100 and 5 vanish;
    # the padded query row 1 still counts, as in the reference: (1-0)² + 0 + (2-4)² + 0 = 5 over 4 entries
    scores_S = torch.tensor([[[[1.0, 100.0], [2.0, -7.0]]]])
    scores_T = torch.tensor([[[[0.0, 5.0], [4.0, 9.0]]]])
    assert attention_mse(scores_S, scores_T, torch.tensor([[1, 0]])).item() == pytest.approx(1.25)


def test_attention_mse_ignores_scores_at_padded_keys():
    S, T = _rand(2, 3, 5, 5), _rand(2, 3, 5, 5, seed=1)
    padded_keys = ~MASK.bool()[:, None, None, :].expand_as(S)
    S2, T2 = S.masked_fill(padded_keys, -1e4), T.masked_fill(padded_keys, 123.0)
    assert attention_mse(S2, T2, MASK).item() == pytest.approx(attention_mse(S, T, MASK).item())


def test_attention_mse_errors():
    with pytest.raises(ValueError, match="same heads"):
        attention_mse(_rand(2, 2, 5, 5), _rand(2, 3, 5, 5), MASK)
    with pytest.raises(ValueError, match="attention_mask must be"):
        attention_mse(_rand(2, 3, 5, 5), _rand(2, 3, 5, 5), MASK[:, :4])


def test_soft_cross_entropy_is_tinybert_prediction_loss():
    # TinyBERT eq. 10 is kd.soft_cross_entropy. p_T = softmax([ln 3, 0]) = [.75, .25], p_S uniform:
    # −(.75·ln .5 + .25·ln .5) = ln 2 (a sum over classes: the reference's .mean() would halve it)
    logits_S = torch.zeros(1, 2, requires_grad=True)
    assert soft_cross_entropy(logits_S, torch.tensor([[math.log(3.0), 0.0]])).item() == pytest.approx(
        math.log(2)
    )
    # temperature divides both: [2 ln 3, 0] / 2 gives the same p_T
    assert soft_cross_entropy(
        logits_S, torch.tensor([[2 * math.log(3.0), 0.0]]), 2.0
    ).item() == pytest.approx(math.log(2))
    # not zero at S == T (it is KL + H(p_T)), but stationary there
    logits_T = torch.tensor([[1.0, -2.0, 0.5]])
    logits_S = logits_T.clone().requires_grad_()
    soft_cross_entropy(logits_S, logits_T).backward()
    assert logits_S.grad.abs().max() < 1e-7


# --- MiniLM / MiniLMv2 ---------------------------------------------------------------------------------


def test_attention_kl_golden_value_averages_per_example():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    probs_T = torch.tensor(
        [
            [[[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]],  # query 2 is padding
            [[[1.0, 0.0, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]],
        ]
    )
    probs_S = torch.tensor(
        [
            [[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.6, 0.2, 0.2]]],
            [[[1.0, 0.0, 0.0], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]],
        ]
    )
    # example 0: KL row 0 = .75·ln(.75/.5) + .25·ln(.25/.5), row 1 = 0; / (1 head · 2 tokens)
    # example 1: its only row is [1, 0, 0] on both sides -> 0. Batch mean of the two examples.
    kl_row0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert attention_kl(probs_S, probs_T, mask).item() == pytest.approx((kl_row0 / 2 + 0.0) / 2, abs=1e-6)


def test_attention_kl_ignores_padding_rows_and_columns():
    S, T = _probs(), _probs(seed=1)
    pad_q = ~MASK.bool()[:, None, :, None].expand_as(S)
    S2, T2 = S.masked_fill(pad_q, 0.3), T.masked_fill(pad_q, 0.9)
    assert attention_kl(S2, T2, MASK).item() == pytest.approx(attention_kl(S, T, MASK).item())


def test_attention_kl_needs_equal_heads():
    with pytest.raises(ValueError, match="same \\(batch, heads, seq, seq\\)"):
        attention_kl(_probs(heads=2), _probs(heads=3), MASK)


def test_value_relation_golden_value():
    # d_k = 1, token 2 padding. Teacher values [1, 0] -> logits [[1, 0], [0, 0]] -> rows [σ(1), 1−σ(1)], [½, ½];
    # student values 0 -> uniform rows. Loss = (KL(row 0) + 0) / 2 tokens.
    mask = torch.tensor([[1, 1, 0]])
    v_T = torch.tensor([1.0, 0.0, 7.0]).view(1, 1, 3, 1)
    v_S = torch.tensor([0.0, 0.0, -3.0]).view(1, 1, 3, 1)
    expected = _bernoulli_kl(_sigmoid(1.0)) / 2
    assert value_relation_kl(v_S, v_T, mask).item() == pytest.approx(expected, abs=1e-6)


def test_value_relation_needs_equal_heads():
    with pytest.raises(ValueError, match="equal head counts, got student 2 and teacher 4"):
        value_relation_kl(_rand(2, 2, 5, 8), _rand(2, 4, 5, 8), MASK)


def test_relation_kl_golden_value_concatenates_heads():
    # 2 heads of width 1 -> one relation head of width d_r = 2. Teacher tokens [1, 1] and [0, 0]:
    # logits x·xᵀ/√2 = [[√2, 0], [0, 0]]; student all zero -> uniform. Loss = KL(row 0) / 2 tokens.
    x_T = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).T.reshape(1, 2, 2, 1)  # (batch, heads, seq, d_head)
    x_S = torch.zeros(1, 2, 2, 1)
    expected = _bernoulli_kl(_sigmoid(math.sqrt(2))) / 2
    assert relation_kl(x_S, x_T, 1, torch.tensor([[1, 1]])).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("num_relation_heads", [1, 2, 4, 8])
def test_relation_kl_is_zero_for_the_same_vectors_split_into_other_heads(num_relation_heads):
    x_T = _rand(2, 4, 5, 8)  # 4 heads × 8
    x_S = x_T.transpose(1, 2).reshape(2, 5, 2, 16).transpose(1, 2)  # the same 32 features as 2 heads × 16
    assert relation_kl(x_S, x_T, num_relation_heads, MASK).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_kl_with_as_many_relation_heads_as_heads_is_value_relation():
    v_S, v_T = _rand(2, 3, 5, 4), _rand(2, 3, 5, 8, seed=1)
    assert relation_kl(v_S, v_T, 3, MASK).item() == pytest.approx(value_relation_kl(v_S, v_T, MASK).item())


def test_relation_kl_ignores_padding():
    x_S, x_T = _rand(2, 2, 5, 6), _rand(2, 4, 5, 6, seed=1)
    pad = ~MASK.bool()[:, None, :, None]
    loss = relation_kl(x_S, x_T, 3, MASK)
    assert relation_kl(
        x_S.masked_fill(pad, 50.0), x_T.masked_fill(pad, -9.0), 3, MASK
    ).item() == pytest.approx(loss.item())


def test_relation_kl_errors():
    with pytest.raises(ValueError, match="student width 12 .* not divisible by num_relation_heads=5"):
        relation_kl(_rand(2, 2, 5, 6), _rand(2, 4, 5, 5), 5, MASK)
    with pytest.raises(ValueError, match="same batch and seq"):
        relation_kl(_rand(2, 2, 5, 6), _rand(2, 2, 4, 6), 2, MASK)
    with pytest.raises(ValueError, match="attention_mask must be"):
        relation_kl(_rand(2, 2, 5, 6), _rand(2, 2, 5, 6), 2, MASK[:1])


# --- DistilBERT ----------------------------------------------------------------------------------------


def test_cosine_hidden_golden_value_skips_padding():
    # token 0: same direction -> 1 − 1 = 0; token 1: orthogonal -> 1 − 0 = 1; token 2 is padding. Mean 0.5
    h_S = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    h_T = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 3.0]]])
    assert cosine_hidden_loss(h_S, h_T, torch.tensor([[1, 1, 0]])).item() == pytest.approx(0.5)


def test_cosine_hidden_errors():
    with pytest.raises(ValueError, match="same width"):
        cosine_hidden_loss(_rand(2, 5, 4), _rand(2, 5, 8), MASK)


# --- MixKD ---------------------------------------------------------------------------------------------


def test_mixup_golden_value():
    emb = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    perm = torch.tensor([1, 0])
    # .25·[1,2] + .75·[3,4] = [2.5, 3.5];  .25·[3,4] + .75·[1,2] = [1.5, 2.5]
    mixed = mixup(emb, 0.25, perm)
    assert torch.allclose(mixed, torch.tensor([[2.5, 3.5], [1.5, 2.5]]))
    mixed.sum().backward()
    assert emb.grad is not None
    # one λ per example, broadcast over the trailing dims: row 0 keeps itself, row 1 takes row 0
    per_example = mixup(emb.detach(), torch.tensor([1.0, 0.0]), perm)
    assert torch.allclose(per_example, torch.tensor([[1.0, 2.0], [1.0, 2.0]]))


def test_mixup_errors():
    with pytest.raises(ValueError, match="perm must be"):
        mixup(_rand(3, 2), 0.5, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="per-example lam"):
        mixup(_rand(3, 2), torch.tensor([0.5, 0.5]), torch.tensor([1, 2, 0]))


def test_sample_mixup_lambda():
    draws = [sample_mixup_lambda(0.4, np.random.default_rng(7)) for _ in range(2)]
    assert draws[0] == draws[1]  # seeded generator -> reproducible
    rng = np.random.default_rng(0)
    many = np.array([sample_mixup_lambda(0.4, rng) for _ in range(2000)])
    assert ((many >= 0) & (many <= 1)).all()
    assert abs(many.mean() - 0.5) < 0.03  # Beta(α, α) is symmetric around ½
    with pytest.raises(ValueError, match="alpha must be > 0"):
        sample_mixup_lambda(0.0, rng)
