"""Block-wise adaptive (two-level tree) softmax over frequency-ranked item blocks (CpRec, Sun et al. SIGIR 2020,
§3.1.2, Eqs. 2-4).

The head softmax scores the ``k_1`` head items and ``n - 1`` cluster tokens, one per tail block; tail block ``j``
has its own softmax over its ``k_j`` items, computed from a projection of ``h`` to width ``d_j``::

    z^1 = h P^1                       [k_1 + n - 1]   (head items in rank order, then the cluster tokens)
    z^j = (h W^j) P^j                 [k_j]
    log p(x | h) = log_softmax(z^1)[rank(x)]                                       x in the head block
    log p(x | h) = log_softmax(z^1)[k_1 + j - 2] + log_softmax(z^j)[g(x)]          x in tail block j

This is a normalised distribution over all K items, so ranking by it is exact full ranking. The layout and the
arithmetic are those of ``torch.nn.AdaptiveLogSoftmaxWithLoss(d, K, cutoffs, div_value, head_bias=False)``: ``head``
is ``Linear(d, k_1 + n - 1, bias=False)`` and ``tail[j-2]`` is ``Sequential(Linear(d, d_j), Linear(d_j, k_j))``
without biases, so weights copy one to one (the tests use torch's module as the oracle). Differences from torch's:
explicit block widths (torch only has ``d // div_value**j``, which reaches 0 at small d), an optional head projection
(``d_1 < d``, the B1 low-rank ablation), item ids in RecBole's catalogue order in and out (the rank order is internal),
and optional dropout on ``h`` and the tail projections (the official code's ``dropout``, default 0).

Parameters: ``d (k_1 + n - 1) + sum_{j>=2} (d + k_j) d_j`` (plus ``d d_1`` and ``d_1`` replacing ``d`` in the head
term when ``d_1 < d``). Training cost per row: the head plus only the target's block.
"""
import torch
from torch import nn
from torch.nn import functional as F

from recbole_compress.utils import ConfigError


def adaptive_softmax_parameters(sizes, in_features, cluster_dims):
    """Closed-form parameter count of :class:`AdaptiveSoftmax`."""
    n = len(sizes)
    d1 = cluster_dims[0]
    head = (in_features * d1 + d1 * (sizes[0] + n - 1)) if d1 < in_features else in_features * (sizes[0] + n - 1)
    return head + sum((in_features + k) * dj for k, dj in zip(sizes[1:], cluster_dims[1:]))


class AdaptiveSoftmax(nn.Module):
    """Tree softmax over the items of ``blocks``.

    Args:
        blocks (FrequencyBlocks): the item partition (may be shared with an :class:`AdaptiveEmbedding`).
        in_features (int): d, the width of the hidden vectors ``h``.
        cluster_dims (list of int): ``[d_1, ..., d_n]``; ``d_1 < d`` projects ``h`` before the head.
        dropout (float): dropout on ``h`` and on the tail projections during training (0 = none, the paper's).
    """

    def __init__(self, blocks, in_features, cluster_dims, dropout=0.0):
        super().__init__()
        if len(cluster_dims) != blocks.n_clusters:
            raise ConfigError(f"cluster_dims {list(cluster_dims)} must give one width per block ({blocks.n_clusters})")
        self.blocks = blocks
        self.in_features = int(in_features)
        self.cluster_dims = [int(x) for x in cluster_dims]
        sizes = blocks.sizes
        n = blocks.n_clusters
        self.shortlist_size = sizes[0]
        self.head_size = sizes[0] + n - 1
        d1 = self.cluster_dims[0]
        self.head_projection = nn.Linear(self.in_features, d1, bias=False) if d1 < self.in_features else None
        self.head = nn.Linear(d1 if self.head_projection is not None else self.in_features, self.head_size, bias=False)
        self.tail = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(self.in_features, dj, bias=False), nn.Linear(dj, k, bias=False))
                for k, dj in zip(sizes[1:], self.cluster_dims[1:])
            ]
        )
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self):
        """Glorot-uniform everywhere (the official code's TF default initialiser)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    # -- pieces -----------------------------------------------------------------------------------------------
    def _head_log_prob(self, h):
        x = self.head_projection(h) if self.head_projection is not None else h
        return F.log_softmax(self.head(x), dim=-1)

    def _tail_log_prob(self, j, h):
        """log_softmax over the items of tail block ``j`` (0-based block index, 1 <= j < n)."""
        proj, out = self.tail[j - 1]
        return F.log_softmax(out(self.dropout(proj(h))), dim=-1)

    # -- public -----------------------------------------------------------------------------------------------
    def log_prob_ranked(self, h):
        """Log-probabilities of all K items in rank order, ``[N, K]`` (torch's ``log_prob`` layout)."""
        h = self.dropout(h)
        head = self._head_log_prob(h)
        parts = [head[:, : self.shortlist_size]]
        for j in range(1, self.blocks.n_clusters):
            parts.append(self._tail_log_prob(j, h) + head[:, self.shortlist_size + j - 1 : self.shortlist_size + j])
        return torch.cat(parts, dim=-1)

    def full_log_prob(self, h, pad_value=float("-inf")):
        """Log-probabilities of every item in RecBole's catalogue order, ``[N, n_items]``; column 0 (padding) is
        ``pad_value``. This is what a ``full_sort_predict`` returns."""
        return self.blocks.to_item_order(self.log_prob_ranked(h), pad_value)

    def target_log_prob(self, h, items):
        """``log p(items | h)`` for item ids ``[N]`` (catalogue order), ``[N]``: the head for every row, and for the
        rows whose item is in tail block j only that block's softmax."""
        if (items <= 0).any():
            raise ValueError("AdaptiveSoftmax: item id 0 (padding) has no probability; targets must be real items")
        h = self.dropout(h)
        head = self._head_log_prob(h)
        cluster = self.blocks.item_cluster[items]
        local = self.blocks.item_local[items]
        out = h.new_zeros(items.shape[0])
        rows = (cluster == 0).nonzero(as_tuple=True)[0]
        if rows.numel():
            out = out.index_copy(0, rows, head[rows, local[rows]])
        for j in range(1, self.blocks.n_clusters):
            rows = (cluster == j).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            lp = self._tail_log_prob(j, h[rows]).gather(1, local[rows].unsqueeze(1)).squeeze(1)
            out = out.index_copy(0, rows, lp + head[rows, self.shortlist_size + j - 1])
        return out

    def forward(self, h, items):
        """Mean negative log-likelihood of the target items (catalogue ids) given ``h`` (the tree CE of Eq. 3)."""
        return -self.target_log_prob(h, items).mean()

    def num_parameters_formula(self):
        return adaptive_softmax_parameters(self.blocks.sizes, self.in_features, self.cluster_dims)

    def extra_repr(self):
        return f"in_features={self.in_features}, sizes={self.blocks.sizes}, cluster_dims={self.cluster_dims}"
