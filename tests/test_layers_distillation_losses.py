"""Distillation losses: KL direction (teacher -> student) on a hand example, gradients, InfoNCE closed form."""
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_compress.model.layers.distillation_losses import info_nce, kl_from_log_probs, soft_label_kl


def test_soft_kl_direction_on_a_hand_example():
    p_teacher = torch.tensor([[0.9, 0.05, 0.05]])
    p_student = torch.tensor([[0.3, 0.4, 0.3]])
    # KL(p_t || p_s) = 0.9 ln(0.9/0.3) + 0.05 ln(0.05/0.4) + 0.05 ln(0.05/0.3) = 0.7952
    by_hand = 0.9 * math.log(3) + 0.05 * math.log(0.125) + 0.05 * math.log(1 / 6)
    # KL(p_s || p_t) = 0.3 ln(0.3/0.9) + 0.4 ln(0.4/0.05) + 0.3 ln(0.3/0.05) = 1.0397
    reverse = 0.3 * math.log(1 / 3) + 0.4 * math.log(8) + 0.3 * math.log(6)
    assert by_hand == pytest.approx(0.7952, abs=1e-4) and reverse == pytest.approx(1.0397, abs=1e-4)
    loss = soft_label_kl(p_student.log(), p_teacher.log())
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)


def test_soft_kl_zero_when_equal_and_matches_torch_kl_div():
    torch.manual_seed(0)
    t, s = torch.randn(4, 9), torch.randn(4, 9)
    assert soft_label_kl(t, t).abs().item() < 1e-6
    expected = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="sum", log_target=True)
    assert soft_label_kl(s, t, reduction="sum").item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft_label_kl(s, t, reduction="batchmean").item() == pytest.approx(expected.item() / 4, rel=1e-5)
    assert soft_label_kl(s, t, reduction="none").shape == (4,)
    with pytest.raises(ValueError, match="reduction"):
        soft_label_kl(s, t, reduction="mean")


def test_soft_kl_gradient_is_student_minus_teacher_and_reaches_the_teacher():
    torch.manual_seed(0)
    s = torch.randn(1, 6, requires_grad=True)
    t = torch.randn(1, 6, requires_grad=True)
    soft_label_kl(s, t).backward()
    torch.testing.assert_close(s.grad, F.softmax(s, -1) - F.softmax(t, -1))
    assert t.grad.abs().sum() > 0  # bidirectional: the teacher is pulled toward the student too
    # with a temperature the T^2 factor keeps the gradient at (p_s - p_t) * T
    s.grad = None
    soft_label_kl(s, t.detach(), temperature=2.0).backward()
    torch.testing.assert_close(s.grad, (F.softmax(s / 2, -1) - F.softmax(t / 2, -1)) * 2.0)


def test_info_nce_closed_form_and_hard_negatives():
    r, tau = 4, 0.2
    u = torch.eye(r, 8)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (r - 1) * math.exp(0.0)))
    assert info_nce(u, u, tau).item() == pytest.approx(expected, rel=1e-5)
    assert info_nce(u, u[[1, 0, 3, 2]], tau).item() > expected
    assert info_nce(3.0 * u, 0.5 * u, tau).item() == pytest.approx(expected, rel=1e-5)  # cosine: scale-free


def test_info_nce_single_row_is_zero_without_nan():
    a = torch.randn(1, 5, requires_grad=True)
    loss = info_nce(a, torch.randn(1, 5))
    assert loss.item() == 0.0
    loss.backward()
    assert not torch.isnan(a.grad).any()
    assert info_nce(torch.randn(0, 5), torch.randn(0, 5)).item() == 0.0


def test_kl_from_log_probs_is_the_soft_loss_at_temperature_one_with_its_gradients():
    torch.manual_seed(0)
    s, t = torch.randn(5, 9, requires_grad=True), torch.randn(5, 9, requires_grad=True)
    s2, t2 = s.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    for reduction in ("batchmean", "sum"):
        a = soft_label_kl(s, t, reduction=reduction)
        b = kl_from_log_probs(s2.log_softmax(-1), t2.log_softmax(-1), reduction=reduction)
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    soft_label_kl(s, t).backward()
    kl_from_log_probs(s2.log_softmax(-1), t2.log_softmax(-1)).backward()
    assert torch.allclose(s.grad, s2.grad, atol=1e-7) and torch.allclose(t.grad, t2.grad, atol=1e-7)
    # the student's gradient is (p_student - p_teacher) / B per row
    expected = (s2.detach().softmax(-1) - t2.detach().softmax(-1)) / 5
    assert torch.allclose(s2.grad, expected, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        kl_from_log_probs(s2, t2, reduction="mean")
