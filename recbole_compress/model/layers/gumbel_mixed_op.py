"""Gumbel-softmax relaxation of a choice among operations: the mixed edge of a differentiable architecture search.

AdaRec (Chen et al., WANT@NeurIPS 2023, §3.5.1, Eq. 17) relaxes the categorical choice of an operation per edge with
Gumbel-softmax, ``y = softmax((log softmax(alpha) + g) / tau)`` with ``g ~ Gumbel(0, 1)``, and uses the *hard*
(straight-through) variant: the forward pass sees ``onehot(argmax y)`` and the backward pass the soft ``y``
(``torch.nn.functional.gumbel_softmax(hard=True)``; ``log softmax(alpha)`` differs from ``alpha`` by a constant, so
sampling on the raw logits is the same distribution). There is no DARTS softmax mixing.

:class:`GumbelMixedOp` holds the candidate operations of one edge and returns ``sum_o y_o * o(x)``. When ``y`` needs
a gradient every candidate runs (each op's output is the gradient of its architecture logit, as in the authors'
code); otherwise only the operations with a non-zero weight run (a one-hot ``y`` at evaluation costs one op). An
edge holding a single operation (a derived architecture) runs it without weights.

:class:`TemperatureSchedule` is the step decay of ``tau`` per epoch: ``tau_e = tau_0 * rate ** (e // every)``.
"""
import torch
import torch.nn.functional as F
from torch import nn


def gumbel_softmax_sample(logits, tau=1.0, hard=True):
    """One relaxed sample per row of ``logits`` (``[..., n_ops]``); hard = one-hot forward, soft gradient."""
    return F.gumbel_softmax(logits, tau=tau, hard=hard, dim=-1)


def argmax_onehot(logits):
    """The one-hot of the argmax per row (the derived choice), no gradient."""
    index = logits.detach().argmax(dim=-1, keepdim=True)
    return torch.zeros_like(logits).scatter_(-1, index, 1.0)


class GumbelMixedOp(nn.Module):
    """One edge: a weighted sum of candidate operations.

    Args:
        ops (dict): operation name -> module, in the order of the weights' last dimension.
    """

    def __init__(self, ops):
        super().__init__()
        if not ops:
            raise ValueError("a mixed operation needs at least one candidate")
        self.ops = nn.ModuleDict(ops)

    @property
    def op_names(self):
        return list(self.ops.keys())

    def forward(self, x, weights=None, mask=None):
        """``sum_o weights[o] * op_o(x)``; ``weights`` may be omitted when the edge holds one operation. A ``mask``
        (valid positions, ``[B, L]``) is passed on to every operation as ``op(x, mask)``."""
        args = (x,) if mask is None else (x, mask)
        if weights is None:
            if len(self.ops) != 1:
                raise ValueError(f"this edge has {len(self.ops)} candidate operations: give their weights")
            return next(iter(self.ops.values()))(*args)
        if weights.shape[-1] != len(self.ops):
            raise ValueError(f"expected {len(self.ops)} weights, got shape {tuple(weights.shape)}")
        all_ops = torch.is_grad_enabled() and weights.requires_grad
        out = None
        for w, op in zip(weights, self.ops.values()):
            if not all_ops and float(w) == 0.0:
                continue
            term = w * op(*args)
            out = term if out is None else out + term
        return torch.zeros_like(x) if out is None else out


class TemperatureSchedule:
    """Step decay of the Gumbel temperature per epoch: ``tau(e) = tau0 * rate ** (e // every)`` (epoch from 0)."""

    def __init__(self, tau0=1.0, rate=0.8, every=5):
        if tau0 <= 0 or rate <= 0 or every < 1:
            raise ValueError(f"need tau0 > 0, rate > 0 and every >= 1, got {tau0}, {rate}, {every}")
        self.tau0, self.rate, self.every = float(tau0), float(rate), int(every)

    def __call__(self, epoch):
        return self.tau0 * self.rate ** (int(epoch) // self.every)
