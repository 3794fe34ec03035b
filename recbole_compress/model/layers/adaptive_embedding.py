"""Block-wise adaptive input embedding (CpRec, Sun et al. SIGIR 2020, §3.1.1, Eq. 1).

Items are split into frequency-ranked blocks (:class:`~recbole_compress.model.layers.frequency_blocks.FrequencyBlocks`).
Block ``j`` stores a table ``Ê^j`` of width ``d_j`` (the head keeps the full width ``d``) and, when ``d_j < d``, a
projection ``W^j`` (``d_j x d``, no bias) to the model width::

    v_x = E^1[g(x)]             x in the head block (d_1 = d: a plain lookup)
    v_x = Ê^j[g(x)] W^j         x in block j with d_j < d
    v_0 = 0                     the padding id

``g(x)`` is the item's index inside its block. Parameters: ``k_1 d + sum_{j>=2} (k_j + d) d_j``.
Rows are looked up block by block (only the positions whose item is in block j touch block j). When a batch has more
positions than there are items (large training batches), building the ``K x d`` matrix once and gathering from it is
cheaper and gives the same values; the stored parameters are the factorised ones either way.
"""
import torch
from torch import nn
from torch.nn import functional as F

from recbole_compress.errors import ConfigError


def adaptive_embedding_parameters(sizes, embedding_dim, cluster_dims):
    """Closed-form parameter count of :class:`AdaptiveEmbedding`: ``sum_j k_j d_j + [d_j < d] d_j d``."""
    return sum(k * dj + (dj * embedding_dim if dj < embedding_dim else 0) for k, dj in zip(sizes, cluster_dims))


class AdaptiveEmbedding(nn.Module):
    """Block-wise adaptive embedding of item ids ``[...]`` to ``[..., embedding_dim]``.

    Args:
        blocks (FrequencyBlocks): the item partition (may be shared with an :class:`AdaptiveSoftmax`).
        embedding_dim (int): d, the output width.
        cluster_dims (list of int): ``[d_1, ..., d_n]``; a block narrower than d gets a projection.
    """

    def __init__(self, blocks, embedding_dim, cluster_dims):
        super().__init__()
        if len(cluster_dims) != blocks.n_clusters:
            raise ConfigError(f"cluster_dims {list(cluster_dims)} must give one width per block ({blocks.n_clusters})")
        self.blocks = blocks
        self.embedding_dim = int(embedding_dim)
        self.cluster_dims = [int(x) for x in cluster_dims]
        self.tables = nn.ParameterList(
            [nn.Parameter(torch.empty(k, dj)) for k, dj in zip(blocks.sizes, self.cluster_dims)]
        )
        self.projections = nn.ParameterList(
            [nn.Parameter(torch.empty(dj, self.embedding_dim)) for dj in self.cluster_dims if dj < self.embedding_dim]
        )
        self._projection_of = {}
        p = 0
        for j, dj in enumerate(self.cluster_dims):
            if dj < self.embedding_dim:
                self._projection_of[j] = p
                p += 1
        self.reset_parameters()

    def reset_parameters(self):
        """Glorot-uniform on every table and projection (the official code's TF default initialiser)."""
        for t in self.tables:
            nn.init.xavier_uniform_(t)
        for w in self.projections:
            nn.init.xavier_uniform_(w)

    def projection(self, j):
        """``W^j`` of block j, or None for a full-width block."""
        p = self._projection_of.get(j)
        return None if p is None else self.projections[p]

    def forward(self, items):
        if items.numel() >= self.blocks.n_real_items:
            # more positions than items: building the K x d matrix once is cheaper than gathering per block
            # (identical values; the parameters stay factorised)
            weight = torch.cat([self.tables[0].new_zeros(1, self.embedding_dim), self.materialise()], dim=0)
            return F.embedding(self.blocks.item_position[items] + 1, weight)  # padding (position -1) -> the zero row
        flat = items.reshape(-1)
        cluster = self.blocks.item_cluster[flat]
        local = self.blocks.item_local[flat]
        out = self.tables[0].new_zeros(flat.numel(), self.embedding_dim)
        for j in range(self.blocks.n_clusters):
            idx = (cluster == j).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            vectors = F.embedding(local[idx], self.tables[j])
            w = self.projection(j)
            if w is not None:
                vectors = vectors @ w
            out.index_copy_(0, idx, vectors)
        return out.view(*items.shape, self.embedding_dim)

    def materialise(self):
        """The effective ``[K, d]`` input matrix in block order (``[E^1; Ê^2 W^2; ...]``), for inspection and tests."""
        parts = []
        for j, t in enumerate(self.tables):
            w = self.projection(j)
            parts.append(t if w is None else t @ w)
        return torch.cat(parts, dim=0)

    def num_parameters_formula(self):
        return adaptive_embedding_parameters(self.blocks.sizes, self.embedding_dim, self.cluster_dims)

    def extra_repr(self):
        return f"embedding_dim={self.embedding_dim}, sizes={self.blocks.sizes}, cluster_dims={self.cluster_dims}"
