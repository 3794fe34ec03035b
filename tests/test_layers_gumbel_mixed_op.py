"""Hard straight-through Gumbel-softmax mixed operation and the temperature schedule."""
import math

import pytest
import torch
from torch import nn

from recbole_compress.model.layers.gumbel_mixed_op import (
    GumbelMixedOp,
    TemperatureSchedule,
    argmax_onehot,
    gumbel_softmax_sample,
)


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.factor * x


def _edge(n=4):
    return GumbelMixedOp({f"op{k}": Scale(float(k + 1)) for k in range(n)})


def test_hard_sample_is_one_hot_with_a_soft_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    y = gumbel_softmax_sample(logits, tau=0.7, hard=True)
    assert torch.equal(y.sum(-1), torch.ones(5)) and set(y.unique().tolist()) <= {0.0, 1.0}
    edge = _edge()
    x = torch.randn(2, 3, 1) + 2.0
    out = sum(edge(x, y[i]).sum() for i in range(5))
    out.backward()
    assert torch.all(logits.grad != 0)  # every op's output reaches its logit


def test_mixed_op_with_gradient_runs_every_candidate():
    edge = _edge()
    x = torch.randn(2, 3, 1)
    w = torch.tensor([0.0, 1.0, 0.0, 0.0], requires_grad=True)
    out = edge(x, w)
    torch.testing.assert_close(out, 2.0 * x)
    assert all(op.calls == 1 for op in edge.ops.values())
    out.sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]) * x.sum())


def test_mixed_op_without_gradient_runs_only_the_chosen_op():
    edge = _edge()
    x = torch.randn(2, 3, 1)
    with torch.no_grad():
        out = edge(x, argmax_onehot(torch.tensor([0.1, 0.2, 3.0, -1.0])))
    torch.testing.assert_close(out, 3.0 * x)
    assert [op.calls for op in edge.ops.values()] == [0, 0, 1, 0]


def test_single_op_edge_needs_no_weights_and_a_supernet_edge_does():
    x = torch.randn(2, 3, 1)
    torch.testing.assert_close(GumbelMixedOp({"a": Scale(2.0)})(x), 2 * x)
    with pytest.raises(ValueError, match="4 candidate operations"):
        _edge()(x)
    with pytest.raises(ValueError, match="expected 4 weights"):
        _edge()(x, torch.ones(3))


def test_sampling_follows_softmax_alpha():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    counts = torch.stack([gumbel_softmax_sample(logits, tau=0.01) for _ in range(4000)]).sum(0) / 4000
    torch.testing.assert_close(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.03, rtol=0)


def test_temperature_schedule():
    tau = TemperatureSchedule(1.0, 0.8, 5)
    assert [tau(e) for e in (0, 4, 5, 9, 10, 14)] == [1.0, 1.0, 0.8, 0.8, pytest.approx(0.64), pytest.approx(0.64)]
    assert tau(199) == pytest.approx(0.8 ** 39)
    with pytest.raises(ValueError):
        TemperatureSchedule(1.0, 0.8, 0)
    assert math.isclose(TemperatureSchedule(2.0, 0.5, 1)(3), 0.25)
