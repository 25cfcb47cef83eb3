import math

import pytest
import torch

from slimnlp.losses.kd import kd_kl, logits_mse, soft_cross_entropy


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_kd_kl_matches_hand_computed_value():
    z_S, z_T, tau = [1.0, 0.0, -1.0], [2.0, 0.5, 0.0], 2.0
    p_S = _softmax([v / tau for v in z_S])
    p_T = _softmax([v / tau for v in z_T])
    expected = tau**2 * _kl(p_T, p_S)
    got = kd_kl(torch.tensor([z_S]), torch.tensor([z_T]), tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_kl_is_batch_mean_and_zero_when_equal():
    a = torch.randn(4, 3)
    assert kd_kl(a, a.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(4, 3)
    per_row = torch.stack([kd_kl(a[i : i + 1], b[i : i + 1], 2.0) for i in range(4)])
    assert kd_kl(a, b, 2.0).item() == pytest.approx(per_row.mean().item(), rel=1e-5)


def test_tau_squared_keeps_gradient_scale():
    """Hinton's reason for τ²: at high τ the soft-target gradient w.r.t. the logits is ≈ (z_S − z_T)/(C·τ²)
    before scaling, so τ²·KL has a gradient roughly independent of τ."""
    z_S = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    z_T = torch.tensor([[0.5, 0.0, -0.4]])
    grads = []
    for tau in (10.0, 20.0):
        z_S.grad = None
        kd_kl(z_S, z_T, tau).backward()
        grads.append(z_S.grad.clone())
    # Unscaled KL's gradient would shrink 4x from tau=10 to tau=20; the scaled one stays put.
    assert torch.allclose(grads[0], grads[1], rtol=0.02)
    centred = (z_S - z_S.mean()) - (z_T - z_T.mean())
    assert torch.allclose(grads[1], centred.detach() / 3, rtol=0.05)


def test_kd_kl_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        kd_kl(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


def test_logits_mse_and_soft_ce_values():
    z_S, z_T = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 1.0]])
    assert logits_mse(z_S, z_T).item() == pytest.approx((1.0 + 4.0) / 2)
    p_T, p_S = _softmax([2.0, 1.0]), _softmax([1.0, 3.0])
    expected = -sum(pt * math.log(ps) for pt, ps in zip(p_T, p_S))
    assert soft_cross_entropy(z_S, z_T).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_reaches_student_only():
    z_S = torch.randn(2, 3, requires_grad=True)
    z_T = torch.randn(2, 3)
    kd_kl(z_S, z_T, 2.0).backward()
    assert z_S.grad is not None and z_S.grad.abs().sum() > 0
    assert z_T.grad is None
