"""Block-wise adaptive (two-level tree) softmax over frequency-ranked item blocks (CpRec, Sun et al. SIGIR 2020,
§3.1.2, Eqs. 2-4).

The head softmax scores the ``k_1`` head items and ``n - 1`` cluster tokens, one per tail block; tail block ``j``
has its own softmax over its ``k_j`` items, computed from a projection of ``h`` to width ``d_j``::

    z^1 = h P^1                       [k_1 + n - 1]   (head items in block order, then the cluster tokens)
    z^j = (h W^j) P^j                 [k_j]
    log p(x | h) = log_softmax(z^1)[g(x)]                                          x in the head block
    log p(x | h) = log_softmax(z^1)[k_1 + j - 2] + log_softmax(z^j)[g(x)]          x in tail block j

This is a normalised distribution over all K items, so ranking by it is exact full ranking. The layout and the
arithmetic are those of ``torch.nn.AdaptiveLogSoftmaxWithLoss(d, K, cutoffs, div_value, head_bias=False)``: ``head``
is ``Linear(d, k_1 + n - 1, bias=False)`` and ``tail[j-2]`` is ``Sequential(Linear(d, d_j), Linear(d_j, k_j))``
without biases, so weights copy one to one (the tests use torch's module as the oracle). Differences from torch's:
explicit block widths (torch only has ``d // div_value**j``, which reaches 0 at small d), an optional head projection
(``d_1 < d``, the B1 low-rank ablation), item ids in RecBole's catalogue order in and out (the block order is internal),
and optional dropout on ``h`` and the tail projections (the official code's ``dropout``, default 0).

Parameters: ``d (k_1 + n - 1) + sum_{j>=2} (d + k_j) d_j`` (plus ``d d_1`` and ``d_1`` replacing ``d`` in the head
term when ``d_1 < d``). Training cost per row: the head plus only the target's block.
"""
import torch
from torch import nn
from torch.nn import functional as F

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.errors import ConfigError


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
        self.dropout = FastDropout(dropout)
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
    def log_prob_block_order(self, h):
        """Log-probabilities of all K items in block order, ``[N, K]`` (torch's ``log_prob`` layout, class c = the
        item at position c of ``blocks.item_order``)."""
        h = self.dropout(h)
        head = self._head_log_prob(h)
        parts = [head[:, : self.shortlist_size]]
        for j in range(1, self.blocks.n_clusters):
            parts.append(self._tail_log_prob(j, h) + head[:, self.shortlist_size + j - 1 : self.shortlist_size + j])
        return torch.cat(parts, dim=-1)

    def full_log_prob(self, h, pad_value=float("-inf"), chunk_elements=1 << 20):
        """Log-probabilities of every item in RecBole's catalogue order, ``[N, n_items]``; column 0 (padding) is
        ``pad_value``. This is what a ``full_sort_predict`` returns.

        Without autograd (evaluation), rows are scored in chunks of about ``chunk_elements`` scores: each chunk's
        block-order scores stay small and cache-resident and are written once, permuted, into the output.
        """
        grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in self.parameters()))
        if grad or (self.training and self.dropout.p > 0):
            return self.blocks.to_catalogue_order(self.log_prob_block_order(h), pad_value)
        n_rows = h.shape[0]
        K = self.blocks.n_real_items
        out = h.new_empty(n_rows, self.blocks.n_items)
        step = max(1, chunk_elements // (K + 1))
        for start in range(0, n_rows, step):
            torch.index_select(
                self._block_order_chunk(h[start : start + step], pad_value), 1, self.blocks.catalogue_index,
                out=out[start : start + step],
            )
        return out

    def _block_order_chunk(self, h, pad_value):
        """No-grad block-order log-probabilities of a few rows, plus a last column holding ``pad_value``."""
        k1 = self.shortlist_size
        x = self.head_projection(h) if self.head_projection is not None else h
        head = F.log_softmax(self.head(x), dim=1)
        parts = [head[:, :k1]]
        for j in range(1, self.blocks.n_clusters):
            proj, tail = self.tail[j - 1]
            parts.append(F.log_softmax(tail(proj(h)), dim=1).add_(head[:, k1 + j - 1 : k1 + j]))
        parts.append(h.new_full((h.shape[0], 1), pad_value))
        return torch.cat(parts, dim=1)

    def target_log_prob(self, h, items):
        """``log p(items | h)`` for item ids ``[N]`` (catalogue order), ``[N]``: the head for every row, and for the
        rows whose item is in tail block j only that block's softmax."""
        if (items <= 0).any():
            raise ValueError("AdaptiveSoftmax: item id 0 (padding) has no probability; targets must be real items")
        h = self.dropout(h)
        x = self.head_projection(h) if self.head_projection is not None else h
        cluster = self.blocks.item_cluster[items]
        local = self.blocks.item_local[items]
        # head label: the item itself in the head block, its block's cluster token otherwise
        head_target = torch.where(cluster == 0, local, self.shortlist_size + cluster - 1)
        out = -F.cross_entropy(self.head(x), head_target, reduction="none")
        for j in range(1, self.blocks.n_clusters):
            rows = (cluster == j).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            proj, tail = self.tail[j - 1]
            logits = tail(self.dropout(proj(h[rows])))
            out = out.index_add(0, rows, -F.cross_entropy(logits, local[rows], reduction="none"))
        return out

    def topk(self, h, k):
        """Exact top-``k`` items of every row with the paper's early stop (§3.1.2): ``(log_probs, item_ids)``, both
        ``[N, k]``, best first, item ids in catalogue order.

        Every item of tail block j has ``p(x) <= p(c_j)`` (its cluster token's probability), so block j is scored only
        for the rows where ``p(c_j)`` exceeds the current k-th best item probability; blocks are visited in
        descending mean token probability, which tightens that bound early. (The official code's rule, skipping a
        block whose token is not among the head's top-k entries, is not exact; this one is.) For top-N serving, not
        for RecBole's full-ranking evaluation, which needs every score.
        """
        with torch.no_grad():
            n_rows, k1 = h.shape[0], self.shortlist_size
            x = self.head_projection(h) if self.head_projection is not None else h
            head = F.log_softmax(self.head(x), dim=1)
            ninf = h.new_full((n_rows, k), float("-inf"))
            best_lp = torch.cat([head[:, :k1], ninf], dim=1).topk(k, dim=1)
            values = best_lp.values
            positions = best_lp.indices  # block-order positions (>= k1 only for -inf fillers)
            tokens = head[:, k1:]
            bounds = self.blocks.bounds.tolist()
            for j in (tokens.mean(0).argsort(descending=True) + 1).tolist():
                rows = (tokens[:, j - 1] > values[:, -1]).nonzero(as_tuple=True)[0]
                if rows.numel() == 0:
                    continue
                proj, tail = self.tail[j - 1]
                block = F.log_softmax(tail(proj(h[rows])), dim=1).add_(tokens[rows, j - 1 : j])
                best = block.topk(min(k, block.shape[1]), dim=1)  # the block's own top-k, then a 2k-wide merge
                merged = torch.cat([values[rows], best.values], dim=1).topk(k, dim=1)
                candidates = torch.cat([positions[rows], best.indices + bounds[j]], dim=1)
                values[rows] = merged.values
                positions[rows] = candidates.gather(1, merged.indices)
            items = self.blocks.item_order.long()[positions.clamp(max=self.blocks.n_real_items - 1)]
            return values, items

    def forward(self, h, items):
        """Mean negative log-likelihood of the target items (catalogue ids) given ``h`` (the tree CE of Eq. 3)."""
        return -self.target_log_prob(h, items).mean()

    def num_parameters_formula(self):
        return adaptive_softmax_parameters(self.blocks.sizes, self.in_features, self.cluster_dims)

    def extra_repr(self):
        return f"in_features={self.in_features}, sizes={self.blocks.sizes}, cluster_dims={self.cluster_dims}"
