"""Product-key memory whose k retrieved values stay separate slots, and the query networks that feed it.

Product keys come from Lample et al., "Large Memory Layers with Product Keys" (NeurIPS 2019). PKM-ACT ("Compressing
Long Range User Behavior Sequence with Interest Experts", Alg. 1 and Eq. 1-4) uses the same search to retrieve k
"interest experts" for each user, and keeps them as k separate vectors (the dispatcher slots of
:mod:`recbole_compress.model.layers.dispatcher`) instead of summing them into one output vector as Lample's layer does.

The search:

- a query ``q`` (one per sequence) is split into halves ``q1``, ``q2``;
- each half is scored against its own set of ``n_keys`` sub-keys (``n_keys = sqrt(K)``, ``K`` the memory size);
- the top-k of each half gives k x k candidate pairs ``(i, j)`` with score ``q1.c_i + q2.c'_j``;
- the final top-k of those candidates is the exact top-k over all ``K = n_keys ** 2`` product keys (if ``i`` is not in
  the top-k of its half, k pairs ``(i'', j)`` beat ``(i, j)``), at cost ``O((sqrt(K) + k^2) d)`` instead of ``O(K d)``;
- the values of the k winners are read with ``F.embedding`` and multiplied by their weights (``weighting``).

Usable on its own: ``ProductKeyMemory(input_size=64, value_size=64, n_keys=16, topk=8)(x)`` with ``x`` of shape
``[B, 64]`` returns ``slots`` of shape ``[B, heads * topk, 64]``; with a ``query_network`` (e.g.
:class:`HierarchicalQueryNetwork`) it takes a sequence ``[B, L, d]`` and its validity mask ``[B, L]`` instead.
"""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from recbole.model.layers import MultiHeadAttention
from torch import nn

from recbole_compress.model.layers.fast_dropout import FastDropout, use_fast_dropout

WEIGHTINGS = ("softmax", "ste", "none")


def product_key_topk(query, sub_keys, topk):
    """Exact top-k over the product keys ``{(c_i, c'_j)}`` by the two-stage product search.

    Args:
        query (torch.Tensor): ``[N, H, d_k]``, one query per row and memory head (``d_k`` even).
        sub_keys (torch.Tensor): ``[H, 2, n_keys, d_k / 2]``, the two sub-key sets of each head.
        topk (int): ``k``, at most ``n_keys`` (each half keeps its own top-k).

    Returns:
        tuple: ``scores`` ``[N, H, k]`` sorted in decreasing order (differentiable with respect to ``query`` and
        ``sub_keys``) and ``indices`` ``[N, H, k]`` into the ``n_keys ** 2`` memory rows, ``index = i * n_keys + j``.
    """
    n_heads, _, n_keys, half = sub_keys.shape
    if query.dim() != 3 or query.size(1) != n_heads or query.size(2) != 2 * half:
        raise ValueError(f"query must have shape [N, {n_heads}, {2 * half}], got {list(query.shape)}")
    if not 1 <= topk <= n_keys:
        raise ValueError(f"topk must be in [1, n_keys={n_keys}], got {topk}")
    q1, q2 = query[..., :half], query[..., half:]
    scores1 = torch.einsum("nhd,hkd->nhk", q1, sub_keys[:, 0])  # [N, H, n_keys]
    scores2 = torch.einsum("nhd,hkd->nhk", q2, sub_keys[:, 1])
    best1, idx1 = scores1.topk(topk, dim=-1)  # [N, H, k]
    best2, idx2 = scores2.topk(topk, dim=-1)
    candidates = (best1.unsqueeze(-1) + best2.unsqueeze(-2)).flatten(-2)  # [N, H, k * k]
    scores, flat = candidates.topk(topk, dim=-1)  # [N, H, k]
    rows = idx1.gather(-1, torch.div(flat, topk, rounding_mode="floor"))
    cols = idx2.gather(-1, flat % topk)
    return scores, rows * n_keys + cols


class PKMOutput(NamedTuple):
    """What :class:`ProductKeyMemory` returns.

    ``slots`` ``[B, H * k, value_size]``: the retrieved values times their weights, head by head, each head's k slots
    in decreasing score order; ``scores``, ``indices`` and ``weights`` ``[B, H, k]``.
    """

    slots: torch.Tensor
    scores: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor


def masked_mean(x, mask):
    """Mean of ``x`` ``[B, L, d]`` over the positions where ``mask`` ``[B, L]`` is True (at least one per row)."""
    mask = mask.to(x.dtype).unsqueeze(-1)
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class MaskedMeanQuery(nn.Module):
    """Query input = masked average of the sequence (PKM-ACT's "w/o Query Net" ablation). No parameters."""

    def forward(self, x, mask):
        return masked_mean(x, mask)


class HierarchicalQueryNetwork(nn.Module):
    r"""PKM-ACT's hierarchical query network (Eq. 1), repeated until one vector is left.

    One level: concatenate ``stride`` consecutive positions (``Reshape(X, (L / stride, stride * d))``), project back to
    ``d`` (``LinearProjection``), then bidirectional self-attention over the chunks (``SelfAttention``; RecBole's
    :class:`~recbole.model.layers.MultiHeadAttention`, residual and LayerNorm included). Levels are stacked, each with
    its own parameters, until the length is 1 (``n_levels=0``) or for ``n_levels`` levels followed by a masked mean.

    Masking: positions where ``mask`` is False are zeroed first; a chunk is valid if any of its members is; invalid
    chunks are masked as attention keys and zeroed after each level. The output depends only on valid positions.

    The cost is linear in ``L`` plus the self-attention over ``L / stride`` chunks at the first level.

    Args:
        hidden_size (int): ``d``.
        max_seq_length (int): the sequence length ``L`` the levels are counted for.
        stride (int): pool size ``s >= 2``.
        n_levels (int): 0 = as many levels as needed to reach length 1; otherwise this many levels, then a masked mean.
    """

    def __init__(
        self,
        hidden_size,
        max_seq_length,
        stride=8,
        n_levels=0,
        n_heads=2,
        hidden_dropout_prob=0.0,
        attn_dropout_prob=0.0,
        layer_norm_eps=1e-12,
    ):
        super().__init__()
        if stride < 2:
            raise ValueError(f"stride must be >= 2, got {stride}")
        if n_levels < 0:
            raise ValueError(f"n_levels must be >= 0, got {n_levels}")
        self.hidden_size = hidden_size
        self.stride = stride
        self.n_levels = self.levels_needed(max_seq_length, stride) if n_levels == 0 else n_levels
        self.projections = nn.ModuleList(nn.Linear(stride * hidden_size, hidden_size) for _ in range(self.n_levels))
        self.attentions = nn.ModuleList(
            use_fast_dropout(MultiHeadAttention(n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob,
                                                layer_norm_eps))
            for _ in range(self.n_levels)
        )

    @staticmethod
    def levels_needed(length, stride):
        """Number of ``T <- ceil(T / stride)`` steps from ``T = length`` to ``T = 1``."""
        levels = 0
        while length > 1:
            length = math.ceil(length / stride)
            levels += 1
        return levels

    def forward(self, x, mask):
        """``x`` ``[B, L, d]``, ``mask`` ``[B, L]`` (True = valid) -> ``[B, d]``."""
        batch = x.size(0)
        z = x * mask.unsqueeze(-1).to(x.dtype)
        valid = mask
        for projection, attention in zip(self.projections, self.attentions):
            length = z.size(1)
            chunks = math.ceil(length / self.stride)
            pad = chunks * self.stride - length
            if pad:
                z = F.pad(z, (0, 0, 0, pad))
                valid = F.pad(valid, (0, pad), value=False)
            z = projection(z.reshape(batch, chunks, self.stride * self.hidden_size))
            valid = valid.reshape(batch, chunks, self.stride).any(-1)
            additive = torch.zeros(batch, 1, 1, chunks, dtype=z.dtype, device=z.device)
            additive = additive.masked_fill(~valid[:, None, None, :], torch.finfo(z.dtype).min)
            z = attention(z, additive) * valid.unsqueeze(-1).to(z.dtype)
        if z.size(1) == 1:
            return z[:, 0]
        return masked_mean(z, valid)


class ProductKeyMemory(nn.Module):
    r"""Product-key memory returning the ``k`` retrieved values of each head as separate slots.

    ``x -> [query_network] -> Linear -> [BatchNorm] -> split into heads -> product-key top-k -> weights * values``.

    Args:
        input_size (int): size of the query input (the output size of ``query_network`` if one is given).
        value_size (int): size of a memory value (a slot).
        n_keys (int): sub-keys per half; the memory has ``n_keys ** 2`` values.
        topk (int): values retrieved per head, ``1 <= topk <= n_keys``.
        heads (int): memory heads, each with its own sub-keys and query slice, sharing the value table; their slots
            are concatenated (``heads * topk`` slots).
        key_size (int): query and full key size ``d_k`` (even; each sub-key has ``d_k / 2``). Default ``value_size``.
        query_batchnorm (bool): BatchNorm1d on the query (Lample et al.; improves key usage). A training batch of one
            query uses the running statistics.
        weighting (str): ``softmax``: weights ``k * softmax(scores)`` (mean 1; gradients reach the keys and the query
            network); ``ste``: forward weights 1 with the softmax gradient; ``none``: weights 1, no gradient to keys or
            query (PKM-ACT's Alg. 1 taken literally).
        input_dropout, query_dropout, value_dropout (float): dropout on the input, the query and the slots.
        query_network (nn.Module): optional ``module(x, mask) -> [B, input_size]`` applied first (then ``forward`` takes
            a sequence and its mask), e.g. :class:`HierarchicalQueryNetwork` or :class:`MaskedMeanQuery`.

    Usage statistics: in eval mode the retrieved indices are counted (``usage_counts``, reset by
    :meth:`reset_usage`), for the key usage and expert load of PKM-ACT's Fig. 4 and 5.
    """

    def __init__(
        self,
        input_size,
        value_size,
        n_keys,
        topk,
        heads=1,
        key_size=None,
        query_batchnorm=True,
        weighting="softmax",
        input_dropout=0.0,
        query_dropout=0.0,
        value_dropout=0.0,
        query_network=None,
    ):
        super().__init__()
        key_size = value_size if key_size is None else key_size
        if key_size < 2 or key_size % 2:
            raise ValueError(f"key_size must be even and >= 2, got {key_size}")
        if n_keys < 1 or heads < 1:
            raise ValueError(f"n_keys and heads must be >= 1, got n_keys={n_keys}, heads={heads}")
        if not 1 <= topk <= n_keys:
            raise ValueError(f"topk must be in [1, n_keys={n_keys}], got {topk}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
        self.input_size, self.value_size, self.key_size = input_size, value_size, key_size
        self.n_keys, self.topk, self.heads, self.weighting = n_keys, topk, heads, weighting
        self.memory_size = n_keys * n_keys
        self.n_slots = heads * topk

        self.query_network = query_network
        self.input_dropout = FastDropout(input_dropout)
        self.query_proj = nn.Linear(input_size, heads * key_size)
        self.query_bn = nn.BatchNorm1d(heads * key_size) if query_batchnorm else None
        self.query_dropout = FastDropout(query_dropout)
        self.sub_keys = nn.Parameter(torch.empty(heads, 2, n_keys, key_size // 2))
        self.values = nn.Parameter(torch.empty(self.memory_size, value_size))
        self.value_dropout = FastDropout(value_dropout)
        self.usage_counts = None
        self.reset_parameters()

    def reset_parameters(self):
        """Sub-keys ~ U(+-1/sqrt(d_k/2)), values ~ N(0, value_size^-1/2) (as XLM's memory); the query projection keeps
        the host model's Linear initialisation (call this after ``model.apply(init_fn)``)."""
        bound = 1.0 / math.sqrt(self.key_size // 2)
        nn.init.uniform_(self.sub_keys, -bound, bound)
        nn.init.normal_(self.values, mean=0.0, std=self.value_size ** -0.5)

    def reset_usage(self):
        self.usage_counts = None

    def _batchnorm(self, q):
        bn = self.query_bn
        use_batch_stats = self.training and q.size(0) > 1
        return F.batch_norm(
            q, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch_stats, bn.momentum, bn.eps
        )

    def query(self, x, mask=None):
        """The memory query ``[B, heads, key_size]``."""
        x = self.input_dropout(x)
        if self.query_network is not None:
            x = self.query_network(x, mask)
        q = self.query_proj(x)
        if self.query_bn is not None:
            q = self._batchnorm(q)
        return self.query_dropout(q).view(q.size(0), self.heads, self.key_size)

    def forward(self, x, mask=None):
        """``x`` ``[B, input_size]`` (or ``[B, L, d]`` with ``mask`` ``[B, L]`` when a query network is set)."""
        scores, indices = product_key_topk(self.query(x, mask), self.sub_keys, self.topk)
        if self.weighting == "softmax":
            weights = self.topk * torch.softmax(scores, dim=-1)
        elif self.weighting == "ste":
            soft = torch.softmax(scores, dim=-1)
            weights = 1.0 + soft - soft.detach()
        else:
            weights = torch.ones_like(scores).detach()
        slots = F.embedding(indices, self.values) * weights.unsqueeze(-1)  # [B, H, k, value_size]
        slots = self.value_dropout(slots.reshape(indices.size(0), self.n_slots, self.value_size))
        if not self.training:
            counts = torch.bincount(indices.detach().flatten(), minlength=self.memory_size)
            self.usage_counts = counts if self.usage_counts is None else self.usage_counts + counts
        return PKMOutput(slots, scores, indices, weights)

    def key_usage(self) -> Optional[float]:
        """Fraction of the memory values retrieved at least once since the last :meth:`reset_usage`."""
        if self.usage_counts is None:
            return None
        return float((self.usage_counts > 0).float().mean())

    def extra_repr(self):
        return (
            f"memory_size={self.memory_size} (n_keys={self.n_keys}^2), topk={self.topk}, heads={self.heads}, "
            f"key_size={self.key_size}, value_size={self.value_size}, weighting={self.weighting!r}"
        )
