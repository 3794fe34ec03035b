"""Soft-attention session readout (SR-GNN style), the session representation of EODRec's backbone.

Xia et al., TOIS 2023, Eq. 3 (after Wu et al., SR-GNN, AAAI 2019), over the valid positions ``t`` of a session::

    xbar    = (sum_t m_t h_t) / sum_t m_t
    alpha_t = f^T sigmoid(W_a tanh(h_t) + b_a + W_b xbar)
    theta   = sum_t m_t alpha_t h_t

The weights are not normalised (no softmax over ``t``). The authors' code applies ``tanh`` to ``h_t`` before
``W_a`` (kept) and averages over padded positions too (fixed here: a masked mean, so what padded positions hold never
matters). A session with no valid position gets the zero vector.
"""
import torch
from torch import nn


class SoftAttentionReadout(nn.Module):
    """``B x L x N`` hidden states and a ``B x L`` validity mask -> ``B x N`` session representations."""

    def __init__(self, hidden_size):
        super().__init__()
        self.w_item = nn.Linear(hidden_size, hidden_size, bias=True)
        self.w_mean = nn.Linear(hidden_size, hidden_size, bias=False)
        self.f = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, hidden, mask):
        mask = mask.to(hidden.dtype).unsqueeze(-1)  # B x L x 1
        length = mask.sum(1).clamp(min=1.0)
        mean = (hidden * mask).sum(1) / length  # B x N
        gate = torch.sigmoid(self.w_item(torch.tanh(hidden)) + self.w_mean(mean).unsqueeze(1))
        alpha = self.f(gate)  # B x L x 1
        return (alpha * mask * hidden).sum(1)
