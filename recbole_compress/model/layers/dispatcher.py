"""Dispatcher attention: L tokens write into m slots and read back from them, in O(L * m), never an L x L matrix.

PKM-ACT ("Compressing Long Range User Behavior Sequence with Interest Experts", Eq. 6-7) replaces self-attention over
the L items of a sequence by two cross-attentions through m << L slots (its "dispatcher"; the slots are the interest
experts a :class:`~recbole_compress.model.layers.product_key_memory.ProductKeyMemory` retrieved for the user):

- aggregate (Eq. 6): ``P' = LN(P + Drop(Attention(Q = P W_Q1, K = X W_K1, V = X W_V1)))``, padded tokens masked;
- dispatch (Eq. 7): ``X' = LN(X + Drop(Attention(Q = X W_Q2, K = P' W_K2, V = P' W_V2)))``.

The attention maps are ``[B, h, m, L]`` and ``[B, h, L, m]``. With slots shared by every sequence (a learned
``[m, d]`` matrix) this is Luna's pack/unpack attention or the Set Transformer's ISAB; it can replace the
self-attention of any RecBole Transformer. Conventions follow RecBole's
:class:`~recbole.model.layers.MultiHeadAttention`: multi-head, scaling ``1/sqrt(d/h)``, attention-probability dropout,
output projection, dropout, residual and post-LayerNorm on the query stream.
"""
import math

import torch
from torch import nn

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.model.layers.twin_attention import rows_at


class CrossMultiHeadAttention(nn.Module):
    r"""Multi-head attention of a query stream over a context stream, with residual and LayerNorm on the query.

    ``out = LN(query + Drop(Dense(softmax(Q K^T / sqrt(d/h) + mask) V)))`` with ``Q = query W_Q``, ``K = context W_K``,
    ``V = context W_V``.

    Args:
        n_heads (int): attention heads ``h`` (``hidden_size`` must be a multiple).
        hidden_size (int): ``d`` of both streams.
        hidden_dropout_prob (float): dropout on the output before the residual.
        attn_dropout_prob (float): dropout on the attention probabilities.
        layer_norm_eps (float): LayerNorm epsilon.
    """

    def __init__(self, n_heads, hidden_size, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, layer_norm_eps=1e-12):
        super().__init__()
        if hidden_size % n_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.scale = 1.0 / math.sqrt(self.head_size)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = FastDropout(attn_dropout_prob)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = FastDropout(hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x):
        return x.view(x.size(0), x.size(1), self.n_heads, self.head_size).transpose(1, 2)  # [B, h, T, d/h]

    def forward(self, query, context, context_mask=None, return_probs=False):
        """``query`` ``[B, Tq, d]``, ``context`` ``[B, Tc, d]``, ``context_mask`` ``[B, Tc]`` (True = attend) ->
        ``[B, Tq, d]`` (and the attention probabilities ``[B, h, Tq, Tc]`` if ``return_probs``)."""
        q = self._heads(self.query(query))
        k = self._heads(self.key(context))
        v = self._heads(self.value(context))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # [B, h, Tq, Tc]
        if context_mask is not None:
            scores = scores.masked_fill(~context_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        context_layer = torch.matmul(self.attn_dropout(probs), v)  # [B, h, Tq, d/h]
        context_layer = context_layer.transpose(1, 2).reshape(query.shape)
        out = self.LayerNorm(query + self.out_dropout(self.dense(context_layer)))
        return (out, probs) if return_probs else out


class DispatcherAttention(nn.Module):
    r"""Tokens write into slots (aggregate, Eq. 6) and read them back (dispatch, Eq. 7).

    Args:
        n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps: as
            :class:`CrossMultiHeadAttention`.
        aggregate (bool): False skips Eq. 6 (the slots are only LayerNorm-ed, ``P' = LN(P)``) so that the tokens read
            the slots as given: PKM-ACT's "w/o Dispatcher" ablation proxy. It saves one cross-attention
            (``4 (d^2 + d)`` parameters).

    ``forward(x, slots, mask)`` with ``x`` ``[B, L, d]``, ``slots`` ``[B, m, d]`` and ``mask`` ``[B, L]`` (True = a real
    token; padded tokens are never read) returns ``(x', slots')`` and, with ``return_probs``, a dict of the attention
    probabilities ``aggregate`` ``[B, h, m, L]`` and ``dispatch`` ``[B, h, L, m]``. Cost: ``O(B L m d + B L d^2)``.

    ``index`` (``[B]`` positions, optional): the tokens read the slots back only there, ``x'`` is ``[B, 1, d]`` and
    equals ``x'[b, index[b]]`` of the full pass. The slots still aggregate every token. A model that reads one
    position of its last block (next-item scoring) saves the other ``L - 1`` rows of Eq. 7 and of what follows.
    """

    def __init__(
        self, n_heads, hidden_size, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, layer_norm_eps=1e-12, aggregate=True
    ):
        super().__init__()
        args = (n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps)
        self.aggregation = CrossMultiHeadAttention(*args) if aggregate else None
        self.slot_norm = None if aggregate else nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dispatch = CrossMultiHeadAttention(*args)

    def forward(self, x, slots, mask=None, return_probs=False, index=None):
        probs = {}
        if self.aggregation is not None:
            slots, probs["aggregate"] = self.aggregation(slots, x, mask, return_probs=True)
        else:
            slots = self.slot_norm(slots)
        if index is not None:
            x = rows_at(x, index).unsqueeze(1)  # [B, 1, d]
        x, probs["dispatch"] = self.dispatch(x, slots, None, return_probs=True)
        return (x, slots, probs) if return_probs else (x, slots)
