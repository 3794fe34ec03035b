"""Compositional-code (codebook) embedding with a fast, exact full-catalogue scorer.

Every item ``v`` owns a code of ``M`` integers ``C[v] = (C[v, 0], ..., C[v, M-1])``, each in ``[0, K)``; codebook
``m`` is a ``K x N`` matrix ``A_m`` and the item's embedding is the **sum** of one codeword per codebook
(Xia et al., "Efficient On-Device Session-Based Recommendation", TOIS 2023, Eq. 12/15)::

    e_v = sum_m A_m[C[v, m]]

Only the ``M * K * N`` codebook floats and the ``|V| x M`` code matrix are stored (uint8 codes when ``K <= 256``).

With ``composition="pair_product"`` the codebooks taken two at a time, ``(0, 1), (2, 3), ...``, also contribute an
elementwise product of two factor vectors (``M/2 * 2 * K * N`` more floats)::

    e_v = sum_m A_m[C[v, m]] + sum_g L_g[C[v, 2g]] * R_g[C[v, 2g+1]]

A sum of codewords makes an item's score a sum of per-codebook terms, so any recombination of the codewords of
items a user scores highly (a "chimera" that shares, say, its first two codes with one history item and the other
two with another) scores as high as they do; the product term lets the score of a pair of codes differ from the sum
of its parts. ``R`` starts at zero, so a fresh layer composes exactly like ``sum``. The ``pair`` scorer stays exact
and nearly as fast: each user's ``K x K`` pair table gets ``<q, L_g[i] * R_g[j]>``, one ``K x N`` by ``N x K``
product per pair.

Full-catalogue scoring never needs the ``|V| x N`` table: with the per-codebook partial scores
``P[b, m, k] = <q_b, A_m[k]>`` (one ``B x N`` by ``N x MK`` product), ``s[b, v] = sum_m P[b, m, C[v, m]]`` is ``M``
gathers per item. :meth:`CodebookEmbedding.full_scores` offers several exact formulations of that sum (they differ
from the dense product only in float summation order):

- ``auto`` (default): ``pair`` when the catalogue has at least :data:`PAIR_MIN_RATIO` times as many rows as the
  pair tables have columns (:func:`use_pair_scorer`), else ``embedding_bag``;
- ``pair``: codebooks taken two at a time; for a few users at once the ``K*K`` sums
  ``P[b, m, i] + P[b, m+1, j]`` of each pair are tabulated (``B' x (M/2) K^2``, cache-resident), and every item's
  score is ``ceil(M/2)`` gathers from them: half the gathers and adds of ``gather``, written once into the result.
  Fastest on a CPU for small ``K`` (on Tmall's 40,727 items at ``M=4, K=32``, N=128, one thread: 1.10x the speed
  of the dense product, the other formulations 0.39-0.97x);
- ``embedding_bag``: ``F.embedding_bag`` over the transposed partial scores (item-major, contiguous
  rows of ``B`` floats, vectorised), written into the ``B x |V|`` result in cache-sized item blocks;
- ``gather``: per codebook, ``index_select`` of the ``B x K`` partial scores along the items, accumulated;
- ``sparse``: the one-hot code matrix as a CSR ``|V| x MK`` sparse matrix times the partial scores;
- ``dense``: the naive path, the composite table (cached while the module is in eval mode) times the queries;
- ``rebuild``: the naive path with the table rebuilt on every call (what a device that stores only codes and
  codebooks does without the decomposition).

The module works under any RecBole backbone: use it in place of ``nn.Embedding(n_items, N)`` for the input
sequence (:meth:`forward`) and replace ``seq_output @ item_embedding.weight.T`` by :meth:`full_scores`.
"""
import math
import warnings
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

SCORE_METHODS = ("auto", "pair", "embedding_bag", "gather", "sparse", "dense", "rebuild")
COMPOSITIONS = ("sum", "pair_product")
#: the scorers that are exact for ``composition="pair_product"`` (the others decompose a plain sum only)
PAIR_PRODUCT_SCORE_METHODS = ("auto", "pair", "dense", "rebuild")


def paper_compression_ratio(n_items, hidden_size, num_codebooks, codebook_size, extra_floats=0):
    """The item table's compression ratio as the paper counts it (Eq. 13): ``|V| N / (M K N + M |V|)``.

    Each code entry counts as one number, like a float; ``n_items`` is ``|V|`` (real items, without padding).
    ``extra_floats`` (e.g. the pair factors of ``composition="pair_product"``) are added to the denominator.
    """
    v, n, m, k = n_items, hidden_size, num_codebooks, codebook_size
    return v * n / (m * k * n + m * v + extra_floats)


def code_dtype(codebook_size):
    """Smallest unsigned-friendly integer dtype holding codes in ``[0, codebook_size)``: uint8 up to K = 256."""
    if codebook_size <= 256:
        return torch.uint8
    if codebook_size <= 32768:
        return torch.int16
    return torch.int32


def code_statistics(codes, codebook_size=None, skip_padding=True):
    """Uniqueness and usage of a code matrix ``codes`` (``n x M`` integers).

    Returns a dict:
        ``items``: rows counted (row 0, the padding id, is skipped when ``skip_padding``);
        ``distinct_codes``: number of different code tuples among them;
        ``collisions``: ``items - distinct_codes``, the rows that would have to change for all codes to be unique;
        ``items_sharing_a_code``: rows whose code tuple is also some other row's;
        ``largest_group``: most rows sharing one code tuple;
        ``codeword_usage_min`` / ``codeword_usage_max``: least / most used codeword over all codebooks (the paper's
        Fig. 6 heatmap range; unused codewords count as 0 when ``codebook_size`` is given).
    """
    codes = torch.as_tensor(codes).long()
    if skip_padding:
        codes = codes[1:]
    n, m = codes.shape
    if n == 0:
        return {"items": 0, "distinct_codes": 0, "collisions": 0, "items_sharing_a_code": 0, "largest_group": 0,
                "codeword_usage_min": 0, "codeword_usage_max": 0}
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    k = int(codebook_size) if codebook_size is not None else int(codes.max()) + 1
    usage = torch.stack([torch.bincount(codes[:, j], minlength=k) for j in range(m)])
    return {
        "items": n,
        "distinct_codes": int(counts.numel()),
        "collisions": int(n - counts.numel()),
        "items_sharing_a_code": int((counts[inverse] > 1).sum()),
        "largest_group": int(counts.max()),
        "codeword_usage_min": int(usage.min()),
        "codeword_usage_max": int(usage.max()),
    }


PAIR_MIN_RATIO = 8


def pair_table_width(num_codebooks, codebook_size):
    """Columns of the concatenated tables of :func:`pair_tables`: ``K^2`` per pair of codebooks, ``K`` for a last one."""
    return (num_codebooks // 2) * codebook_size * codebook_size + (num_codebooks % 2) * codebook_size


def use_pair_scorer(num_embeddings, num_codebooks, codebook_size):
    """Whether ``auto`` scores with ``pair``: tabulating the pair sums pays off only when the catalogue is much larger
    than the tables (on one CPU thread, N=128, M=4, K=32: 1.10x the dense product's speed at 40,728 items, 0.27x at
    1,683, where ``embedding_bag`` gave 0.64x)."""
    return num_embeddings >= PAIR_MIN_RATIO * pair_table_width(num_codebooks, codebook_size)


def pair_columns(codes, codebook_size):
    """``G x n`` long: for the codebooks taken two at a time, ``(0, 1), (2, 3), ...`` (a last single one when ``M`` is
    odd), the column of every item in the concatenated tables of :func:`pair_tables`:
    ``offset_g + C[v, m] * K + C[v, m+1]`` (or ``offset_g + C[v, m]``)."""
    columns, offset = [], 0
    for m in range(0, codes.shape[1], 2):
        if m + 1 < codes.shape[1]:
            columns.append(offset + codes[:, m] * codebook_size + codes[:, m + 1])
            offset += codebook_size * codebook_size
        else:
            columns.append(offset + codes[:, m])
            offset += codebook_size
    return torch.stack(columns)


def pair_tables(partial: torch.Tensor) -> torch.Tensor:
    """``B x (sum of group sizes)`` from the ``B x M x K`` partial scores: for each pair of codebooks the ``K*K`` sums
    ``P[b, m, i] + P[b, m+1, j]`` (column ``i*K + j``), then a last single codebook's ``K`` partials.
    TorchScript-able."""
    b, m_total, k = partial.size(0), partial.size(1), partial.size(2)
    tables: List[torch.Tensor] = []
    for m in range(0, m_total, 2):
        if m + 1 < m_total:
            tables.append((partial[:, m, :].unsqueeze(2) + partial[:, m + 1, :].unsqueeze(1)).reshape(b, k * k))
        else:
            tables.append(partial[:, m, :])
    return torch.cat(tables, 1)


def pair_interaction_rows(codes, factors):
    """``sum_g L_g[codes[..., 2g]] * R_g[codes[..., 2g+1]]`` for ``factors`` ``G x 2 x K x N`` (``L = factors[:, 0]``,
    ``R = factors[:, 1]``): shape ``codes.shape[:-1] + (N,)``. TorchScript-able."""
    size: List[int] = [int(d) for d in codes.shape[:-1]]
    size.append(factors.size(3))
    out = torch.zeros(size, dtype=factors.dtype, device=factors.device)
    for g in range(factors.size(0)):
        out = out + F.embedding(codes[..., 2 * g], factors[g, 0]) * F.embedding(codes[..., 2 * g + 1], factors[g, 1])
    return out


def add_pair_interactions(tables, query, factors):
    """Add to the :func:`pair_tables` ``tables`` (``B x width``) of ``query`` (``B x N``) the product terms of
    ``factors`` (``G x 2 x K x N``): column ``i*K + j`` of pair ``g`` gains ``<q, L_g[i] * R_g[j]>``. In place;
    returns ``tables``. TorchScript-able."""
    b, k = query.size(0), factors.size(2)
    for g in range(factors.size(0)):
        left = query.unsqueeze(1) * factors[g, 0].unsqueeze(0)  # B x K x N
        tables[:, g * k * k:(g + 1) * k * k] += torch.matmul(left, factors[g, 1].t()).reshape(b, k * k)
    return tables


class CodebookEmbedding(nn.Module):
    r"""Item embeddings composed from ``M`` codebooks of ``K`` vectors: ``e_v = \sum_m A_m[C[v, m]]``.

    Args:
        num_embeddings (int): rows of the table (RecBole's ``n_items``, padding id 0 included).
        embedding_dim (int): ``N``.
        num_codebooks (int): ``M``, codes per item.
        codebook_size (int): ``K``, codewords per codebook.
        score_chunk (int): items per block in the ``embedding_bag`` scorer (cache blocking; any value is exact).
        composition (str): ``sum`` (the paper) or ``pair_product`` (module docstring; needs ``M >= 2``).

    Attributes:
        codebooks (Parameter): ``M x K x N``.
        pair_factors (Parameter or None): ``M//2 x 2 x K x N`` (``pair_product`` only): ``L_g = pair_factors[g, 0]``
            (initialised like the codebooks), ``R_g = pair_factors[g, 1]`` (initialised to zero).
        codes (buffer): ``num_embeddings x M`` in the smallest integer dtype (:func:`code_dtype`); set with
            :meth:`set_codes`. Saved in the state_dict. Row 0 (padding) has a code like any other row.
    """

    def __init__(self, num_embeddings, embedding_dim, num_codebooks, codebook_size, score_chunk=128, composition="sum"):
        super().__init__()
        if num_codebooks < 1 or codebook_size < 1:
            raise ValueError(f"num_codebooks and codebook_size must be >= 1, got {num_codebooks}, {codebook_size}")
        if composition not in COMPOSITIONS or composition == "pair_product" and num_codebooks < 2:
            raise ValueError(f"composition must be one of {COMPOSITIONS} ('pair_product' needs num_codebooks >= 2), "
                             f"got {composition!r} with num_codebooks={num_codebooks}")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.num_codebooks = int(num_codebooks)
        self.codebook_size = int(codebook_size)
        self.score_chunk = int(score_chunk)
        self.codebooks = nn.Parameter(torch.empty(num_codebooks, codebook_size, embedding_dim))
        nn.init.uniform_(self.codebooks, -0.1, 0.1)
        self.composition = composition
        self.pair_factors = None
        if composition == "pair_product":
            self.pair_factors = nn.Parameter(torch.zeros(num_codebooks // 2, 2, codebook_size, embedding_dim))
            with torch.no_grad():
                nn.init.uniform_(self.pair_factors[:, 0], -0.1, 0.1)
        self.register_buffer("codes", torch.zeros(num_embeddings, num_codebooks, dtype=code_dtype(codebook_size)))
        self._index_cache = None
        self._pair_cache = None
        self._table_cache = None
        self._csr_cache = None

    # -- codes -----------------------------------------------------------------------------------------------------
    def set_codes(self, codes):
        """Store ``codes`` (``num_embeddings x M`` integers in ``[0, K)``)."""
        codes = torch.as_tensor(codes)
        if codes.shape != self.codes.shape:
            raise ValueError(f"codes must have shape {tuple(self.codes.shape)}, got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        with torch.no_grad():
            self.codes.copy_(codes.to(self.codes.dtype))

    def _key(self):
        return (self.codes.data_ptr(), self.codes._version, self.codes.device)

    def flat_index(self):
        """``num_embeddings x M`` int64 indices into the flattened ``(M*K) x N`` codebooks: ``C[v, m] + m*K``.

        Cached until the codes change (``set_codes``, ``load_state_dict``)."""
        key = self._key()
        if self._index_cache is None or self._index_cache[0] != key:
            offsets = torch.arange(self.num_codebooks, device=self.codes.device) * self.codebook_size
            index = self.codes.long() + offsets
            self._index_cache = (key, index, [index[:, m].contiguous() for m in range(self.num_codebooks)])
            self._pair_cache = None
        return self._index_cache[1]

    def _pair_index(self):
        """:func:`pair_columns` of the stored codes, cached until the codes change."""
        self.flat_index()
        if self._pair_cache is None:
            self._pair_cache = pair_columns(self.codes.long(), self.codebook_size)
        return self._pair_cache

    def _pair_scores(self, query, rows=8):
        partial = self.partial_scores(query)
        columns = self._pair_index()
        if torch.is_grad_enabled() and any(p.requires_grad for p in (query, *self.parameters())):
            tables = self._with_interactions(pair_tables(partial), query)
            out = tables.index_select(1, columns[0])
            for col in columns[1:]:
                out = out + tables.index_select(1, col)
            return out
        out = query.new_empty(query.shape[0], self.num_embeddings)
        for start in range(0, query.shape[0], rows):  # a few users at a time: their group tables stay in cache
            tables = self._with_interactions(pair_tables(partial[start:start + rows]), query[start:start + rows])
            block = out[start:start + rows]
            if len(columns) == 1:
                torch.index_select(tables, 1, columns[0], out=block)
                continue
            torch.add(tables.index_select(1, columns[0]), tables.index_select(1, columns[1]), out=block)
            for col in columns[2:]:
                block += tables.index_select(1, col)
        return out

    def _with_interactions(self, tables, query):
        if self.pair_factors is None:
            return tables
        return add_pair_interactions(tables, query, self.pair_factors)

    def _column_index(self):
        self.flat_index()
        return self._index_cache[2]

    def statistics(self):
        """:func:`code_statistics` of the stored codes (padding row skipped)."""
        return code_statistics(self.codes, self.codebook_size)

    # -- embeddings ------------------------------------------------------------------------------------------------
    def lookup(self, codes):
        """Composite embeddings of explicit codes (``... x M`` integers): ``sum_m A_m[codes[..., m]]`` (plus the pair
        products with ``pair_product``)."""
        codes = codes.long()
        offsets = torch.arange(self.num_codebooks, device=codes.device) * self.codebook_size
        flat = self.codebooks.reshape(-1, self.embedding_dim)
        return self._add_products(F.embedding(codes + offsets, flat).sum(-2), codes)

    def _add_products(self, summed, codes):
        """``summed`` plus the pair products of ``codes`` (``pair_product``), else ``summed``."""
        if self.pair_factors is None:
            return summed
        return summed + pair_interaction_rows(codes, self.pair_factors)

    def forward(self, item_ids):
        """Composite embeddings of ``item_ids`` (any shape) from the stored codes: ``item_ids.shape + (N,)``."""
        index = self.flat_index()[item_ids]
        summed = F.embedding(index, self.codebooks.reshape(-1, self.embedding_dim)).sum(-2)
        return summed if self.pair_factors is None else self._add_products(summed, self.codes[item_ids].long())

    def table(self):
        """The full composite table ``num_embeddings x N`` (gather-sum over the stored codes)."""
        flat = self.codebooks.reshape(-1, self.embedding_dim)
        summed = F.embedding_bag(self.flat_index(), flat, mode="sum")
        return summed if self.pair_factors is None else self._add_products(summed, self.codes.long())

    @property
    def weight(self):
        """The composite table, so that code written for ``nn.Embedding.weight`` keeps working."""
        return self.table()

    def table_from_onehot(self, onehot):
        """Table from (relaxed) one-hot codes ``n x M x K``: ``onehot.reshape(n, MK) @ A.reshape(MK, N)`` (Eq. 15).

        Differentiable in ``onehot``: the straight-through Gumbel codes of :class:`GumbelCodeEncoder` reach the
        encoder through here."""
        n = onehot.shape[0]
        summed = onehot.reshape(n, -1) @ self.codebooks.reshape(-1, self.embedding_dim)
        if self.pair_factors is None:
            return summed
        for g in range(self.pair_factors.shape[0]):
            left, right = self.pair_factors[g, 0], self.pair_factors[g, 1]
            summed = summed + (onehot[:, 2 * g] @ left) * (onehot[:, 2 * g + 1] @ right)
        return summed

    # -- scoring ---------------------------------------------------------------------------------------------------
    def partial_scores(self, query):
        """``P[b, m, k] = <query_b, A_m[k]>``, shape ``B x M x K``."""
        flat = self.codebooks.reshape(-1, self.embedding_dim)
        return (query @ flat.t()).view(query.shape[0], self.num_codebooks, self.codebook_size)

    def _onehot_csr(self):
        key = self._key()
        if self._csr_cache is None or self._csr_cache[0] != key:
            index = self.flat_index()
            n, m = index.shape
            crow = torch.arange(0, n * m + 1, m, device=index.device)
            values = torch.ones(n * m, device=index.device, dtype=self.codebooks.dtype)
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                csr = torch.sparse_csr_tensor(crow, index.reshape(-1), values, (n, m * self.codebook_size),
                                              check_invariants=False)
            self._csr_cache = (key, csr)
        return self._csr_cache[1]

    def _cached_table(self):
        if self.training or torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self.table()
        key = (self._key(), *((p.data_ptr(), p._version) for p in self.parameters()))
        if self._table_cache is None or self._table_cache[0] != key:
            self._table_cache = (key, self.table().detach())
        return self._table_cache[1]

    def full_scores(self, query, method="auto"):
        """Scores of every item for each query row: ``query @ table().T``, shape ``B x num_embeddings``.

        Args:
            query: ``B x N``.
            method: one of :data:`SCORE_METHODS` (all exact up to float summation order).
        """
        if method == "auto":
            use_pair = use_pair_scorer(self.num_embeddings, self.num_codebooks, self.codebook_size)
            method = "pair" if use_pair else ("embedding_bag" if self.pair_factors is None else "dense")
        if self.pair_factors is not None and method not in PAIR_PRODUCT_SCORE_METHODS:
            raise ValueError(f"score method {method!r} decomposes a plain sum of codewords; with composition "
                             f"'pair_product' use one of {', '.join(PAIR_PRODUCT_SCORE_METHODS)}")
        if method == "pair":
            return self._pair_scores(query)
        if method == "dense":
            return query @ self._cached_table().t()
        if method == "rebuild":
            return query @ self.table().t()
        if method == "embedding_bag":
            flat = self.codebooks.reshape(-1, self.embedding_dim)
            partial_t = flat @ query.t()  # (M*K) x B: one row of B floats per codeword
            index = self.flat_index()
            out = query.new_empty(query.shape[0], self.num_embeddings)
            chunk = self.score_chunk
            for start in range(0, self.num_embeddings, chunk):
                out[:, start:start + chunk] = F.embedding_bag(index[start:start + chunk], partial_t, mode="sum").t()
            return out
        if method == "gather":
            partial = query @ self.codebooks.reshape(-1, self.embedding_dim).t()  # B x (M*K)
            columns = self._column_index()
            out = partial.index_select(1, columns[0])
            for m in range(1, self.num_codebooks):
                out += partial.index_select(1, columns[m])
            return out
        if method == "sparse":
            partial_t = self.codebooks.reshape(-1, self.embedding_dim) @ query.t()
            return (self._onehot_csr() @ partial_t).t().contiguous()
        raise ValueError(f"score method must be one of {', '.join(SCORE_METHODS)}; got {method!r}")

    # -- size ------------------------------------------------------------------------------------------------------
    def storage_bytes(self):
        """Bytes of what a device stores: ``{'codebooks': 4*M*K*N (float32), 'codes': n*M*itemsize}``, and
        ``'pair_factors'`` (float32) with ``composition="pair_product"``."""
        sizes = {
            "codebooks": self.codebooks.numel() * self.codebooks.element_size(),
            "codes": self.codes.numel() * self.codes.element_size(),
        }
        if self.pair_factors is not None:
            sizes["pair_factors"] = self.pair_factors.numel() * self.pair_factors.element_size()
        return sizes

    def compression_ratio(self, skip_padding=True):
        """:func:`paper_compression_ratio` of this table (``|V| = num_embeddings - 1`` when ``skip_padding``)."""
        v = self.num_embeddings - (1 if skip_padding else 0)
        extra = 0 if self.pair_factors is None else self.pair_factors.numel()
        return paper_compression_ratio(v, self.embedding_dim, self.num_codebooks, self.codebook_size, extra)

    def bits_per_code(self):
        return max(1, math.ceil(math.log2(self.codebook_size)))

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, num_codebooks={self.num_codebooks}, "
                f"codebook_size={self.codebook_size}, codes={str(self.codes.dtype).replace('torch.', '')}, "
                f"composition={self.composition}")
