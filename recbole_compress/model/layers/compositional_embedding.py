"""Quotient-remainder (mixed-radix) compositional embedding (Shi et al., KDD 2020; LSAN, Li et al., CIKM 2021 §3.1).

An id table of ``V`` rows is replaced by ``N`` small *base* tables of ``m_1, ..., m_N`` rows with
``m_1 * ... * m_N >= V``. Item ``v`` (1-based, 0 is padding) has the 0-based index ``k = v - 1`` and selects in table
``n`` the row

    q_n(k) = floor(k / (m_1 * ... * m_{n-1})) mod m_n          (Eq.(1)-(5) of LSAN; the mixed-radix digits of k)

so every id gets a distinct tuple of base rows. With the compression rate ``m`` the tables have ``m`` rows (the
remainder table) and ``ceil(V / m)`` rows (the quotient table) for ``N = 2``; in general ``m_1 = ... = m_{N-1} = m``
and ``m_N = ceil(V / m^{N-1})``. Memory: ``sum_n m_n * D`` instead of ``V * D``.

:class:`QuotientRemainderEmbedding` is a drop-in replacement for ``nn.Embedding(V + 1, D, padding_idx=0)``:
``forward(ids)`` returns the merged vectors (``combine``: ``sum``, ``mean`` or ``mult``; padding id 0 gives a zero
vector) and ``.weight`` the merged ``[V + 1, D]`` table (row 0 zero) that RecBole's models use as the output layer. So it can sit
under any RecBole backbone, e.g. ``sasrec.item_embedding = QuotientRemainderEmbedding(sasrec.n_items - 1, 64, 2)``.
``base_vectors(ids)`` returns the selected base vectors ``[..., N, D]`` unmerged, for a learned merge such as LSAN's
context-aware attention.

Why the merge matters. With an additive merge (``sum``/``mean``) and ``N = 2``, the ``m`` items that share a quotient
row differ only by the remainder rows, which are shared by *every* quotient row: items ``k`` and ``k + 1`` of a pair
differ by the same global vector ``E_1[0] - E_1[1]`` for every pair. As an output table (scores ``h . W[v]``) the
within-pair ranking is then one global direction per user: the table can rank ``ceil(V/m)`` clusters plus a
remainder choice shared by all clusters, whatever D. The element-wise product (``mult``, the default of Shi et al.'s
QR trick) gives item ``(r, q)`` the vector ``E_1[r] * E_2[q]``: two items of a pair differ by
``(E_1[0] - E_1[1]) * E_2[q]``, a different vector for every quotient row, with the same parameters.

A product of two ``N(0, s)`` vectors has scale ``s^2``, so ``mult`` needs its own initialisation (``init``):
``scaled`` draws every table from ``N(0, init_std^(1/N))`` so that the product has the scale ``init_std`` of an
ordinary table and the items of a pair start uncorrelated; ``ones`` draws the remainder tables from
``N(1, init_std)`` and the last (quotient) table from ``N(0, init_std)``, so that the product starts as the quotient
vector (pair members start almost equal); ``normal`` is ``N(0, init_std)`` for every table (right for ``sum``).
``init: auto`` is ``scaled`` for ``mult`` and ``normal`` otherwise.

Which items share a row. By default item ``v`` takes ``k = v - 1``, so the items sharing a quotient row are whatever
ids happen to be neighbours (in RecBole, the order in which items first appear in the data). ``index_of_id`` gives
another assignment, e.g. :func:`frequency_spread_order`: item of frequency rank ``r`` takes the quotient row
``r mod m_N``, so the ``m_N`` most frequent items each have a quotient row of their own and every row is shared by
items of ranks ``m_N`` apart (a popular item with a rarer one): the idea of frequency-blocked adaptive embeddings,
that capacity should go where the training targets are. In LSAN on beauty it ranked worse than the id order
(docs/LSAN.md): a rare item then scores as a scaled copy of a popular one. :func:`cooccurrence_group_order` shares
rows between items that follow one another in the training sequences instead, so that a shared row serves alike
items (in LSAN on beauty: within noise of the id order, docs/LSAN.md). :func:`complementary_index` with
:func:`complementary_table_sizes` changes the partition itself: the same rows split into ``N`` near-equal, pairwise
coprime tables, item ``k`` taking row ``k mod m_n`` in each (Shi et al.'s complementary partitions), so that no
table is a tiny remainder table shared by every item; each row then serves a few items far apart in the id order,
and in LSAN on beauty that ranked clearly worse than the id order (docs/LSAN.md).
"""
import math

import torch
from torch import nn


def not_smaller_problem(sizes, num_items):
    """A message when base tables of ``sizes`` rows are not smaller than the ``num_items``-row table they replace
    (compression that compresses nothing), else None."""
    if sum(sizes) < num_items:
        return None
    return (f"base tables of {list(sizes)} rows ({sum(sizes)} in all) are not smaller than the {num_items}-item table "
            f"they replace: choose 1 < compression_rate < {num_items}")


def qr_table_sizes(num_items, compression_rate=2, num_tables=2):
    """Rows of each base table: ``[m] * (N - 1) + [ceil(V / m^(N-1))]``.

    Args:
        num_items (int): V, the number of real ids (padding excluded).
        compression_rate (int): m >= 1.
        num_tables (int): N >= 1.
    """
    if int(num_items) < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if int(compression_rate) < 1:
        raise ValueError(f"compression_rate must be an integer >= 1, got {compression_rate}")
    if int(num_tables) < 1:
        raise ValueError(f"num_base_tables must be an integer >= 1, got {num_tables}")
    m, n = int(compression_rate), int(num_tables)
    if n == 1:
        return [int(num_items)]
    return [m] * (n - 1) + [max(1, math.ceil(int(num_items) / m ** (n - 1)))]


def qr_indices(k, table_sizes):
    """Mixed-radix digits of the 0-based indices ``k`` (any integer tensor): ``[..., N]`` row indices."""
    digits = []
    radix = 1
    for size in table_sizes:
        digits.append(torch.div(k, radix, rounding_mode="floor") % size)
        radix *= size
    return torch.stack(digits, dim=-1)


def elementwise_product(vectors):
    """``[..., N, D] -> [..., D]``: the element-wise product of the N vectors (Shi et al.'s multiplicative merge).

    The same values as ``vectors.prod(dim=-2)``, whose backward handles zeros through cumulative products and is
    several times slower on a CPU; N is small (2 or 3), so N - 1 multiplications are all it takes."""
    factors = vectors.unbind(dim=-2)
    product = factors[0]
    for factor in factors[1:]:
        product = product * factor
    return product


def frequency_spread_order(counts, table_sizes):
    """The 0-based index ``k`` of every id (``[V + 1]``, entry 0 for padding) that gives the item of frequency rank
    ``r`` (0 = most frequent; ties by ascending id) the last (quotient) table's row ``r mod m_N`` and the rows
    ``r div m_N`` (mixed radix) in the other tables.

    Args:
        counts (LongTensor): ``[V + 1]`` training frequency of every id (entry 0, padding, is ignored).
        table_sizes (list of int): ``[m_1, ..., m_N]`` with ``m_1 * ... * m_N >= V``.
    """
    num_items = counts.numel() - 1
    ids = torch.arange(1, num_items + 1)
    rank_order = ids[torch.argsort(-counts[1:].long(), stable=True)]  # ids by descending count, ties by id
    ranks = torch.empty(num_items + 1, dtype=torch.long)
    ranks[0] = 0
    ranks[rank_order] = torch.arange(num_items)
    quotient_rows = table_sizes[-1]
    lower = math.prod(table_sizes[:-1])
    index = (ranks % quotient_rows) * lower + torch.div(ranks, quotient_rows, rounding_mode="floor")
    index[0] = 0
    return index


def cooccurrence_group_order(prev_items, next_items, num_items, table_sizes):
    """The 0-based index ``k`` of every id (``[V + 1]``) that puts items which follow one another in the training
    sequences into the same quotient row, so that the items sharing a row are alike and the other tables' rows
    (the remainder digits) tell them apart.

    Groups of ``m_1 * ... * m_{N-1}`` items (one quotient row each) are built greedily from the most frequent
    consecutive pairs ``(prev_items[t], next_items[t])``: a pair of ungrouped items opens a group, an ungrouped item
    joins its partner's group while it has room, and a pair joins two groups that fit in one. Items never grouped,
    and groups left short, are packed in order into the remaining rows, so that every row but the last is full.

    Args:
        prev_items, next_items (LongTensor): item ids of consecutive interactions (0 = padding, ignored).
        num_items (int): V.
        table_sizes (list of int): ``[m_1, ..., m_N]`` with ``m_1 * ... * m_N >= V``.
    """
    size = math.prod(table_sizes[:-1])
    a, b = torch.minimum(prev_items, next_items).long(), torch.maximum(prev_items, next_items).long()
    keep = (a > 0) & (a != b)
    pairs, counts = torch.unique(a[keep] * (num_items + 1) + b[keep], return_counts=True)
    group_of, groups = {}, []
    for pair in pairs[torch.argsort(-counts, stable=True)].tolist() if size > 1 else []:
        i, j = divmod(pair, num_items + 1)
        gi, gj = group_of.get(i), group_of.get(j)
        if gi is None and gj is None:
            group_of[i] = group_of[j] = len(groups)
            groups.append([i, j])
        elif (gi is None) != (gj is None):
            item, g = (i, gj) if gi is None else (j, gi)
            if len(groups[g]) < size:
                group_of[item] = g
                groups[g].append(item)
        elif gi != gj and len(groups[gi]) + len(groups[gj]) <= size:  # two short groups joined by this pair
            for item in groups[gj]:
                group_of[item] = gi
            groups[gi] += groups[gj]
            groups[gj] = []
    full = [g for g in groups if len(g) == size]
    rest = [i for g in groups if 0 < len(g) < size for i in g] + [i for i in range(1, num_items + 1)
                                                                   if i not in group_of]
    index = torch.zeros(num_items + 1, dtype=torch.long)
    for row, members in enumerate(full + [rest[k:k + size] for k in range(0, len(rest), size)]):
        for digit, item in enumerate(members):
            index[item] = row * size + digit
    return index


def pairwise_coprime(sizes):
    """True when no two of ``sizes`` share a divisor above 1."""
    return all(math.gcd(a, b) == 1 for i, a in enumerate(sizes) for b in sizes[i + 1:])


def complementary_table_sizes(num_items, total_rows, num_tables=2):
    """``N`` near-equal, pairwise coprime table sizes with at most ``total_rows`` rows in all (e.g. the rows of the
    quotient-remainder tables they replace, :func:`qr_table_sizes`) and a product of at least ``num_items``: the
    largest such sizes found scanning down from ``total_rows / N`` (for N = 2: two consecutive integers)."""
    n, total = int(num_tables), int(total_rows)
    if n == 2:  # consecutive integers are coprime
        sizes = [(total - 1) // 2, (total - 1) // 2 + 1]
    else:
        sizes, c = [], total // n
        while len(sizes) < n and c >= 2:
            if all(math.gcd(c, s) == 1 for s in sizes):
                sizes.append(c)
            c -= 1
    if len(sizes) < n or min(sizes) < 1 or math.prod(sizes) < num_items:
        raise ValueError(f"{total_rows} rows cannot make {n} pairwise coprime tables whose product reaches the "
                         f"{num_items} items")
    return sorted(sizes)


def complementary_index(num_items, table_sizes):
    """The 0-based index ``k'`` of every id (``[V + 1]``, entry 0 for padding) whose mixed-radix digits are
    ``(k mod m_1, ..., k mod m_N)`` for ``k = id - 1``: Shi et al.'s complementary partitions. With pairwise coprime
    sizes whose product is at least V, the Chinese remainder theorem gives every item its own tuple of rows, every
    row of every table is used, and two items that share a row of one table share no row of another (for N = 2):
    the items an item is tied to differ from table to table, where in the quotient-remainder order the ``m_1`` items
    of a quotient row share it and differ only through the small remainder tables."""
    if not pairwise_coprime(table_sizes):
        raise ValueError(f"complementary partitions need pairwise coprime table sizes, got {list(table_sizes)}")
    k = torch.arange(int(num_items))
    index, radix = torch.zeros_like(k), 1
    for size in table_sizes:
        index += (k % size) * radix
        radix *= size
    return torch.cat([torch.zeros(1, dtype=torch.long), index])


class QuotientRemainderEmbedding(nn.Module):
    r"""Compositional id embedding from ``N`` quotient-remainder base tables.

    Args:
        num_items (int): V, the number of real ids; ids run from 1 to V and 0 is padding (RecBole's convention).
        embedding_dim (int): D.
        compression_rate (int): m (rows of the remainder tables). Ignored when ``table_sizes`` is given.
        num_tables (int): N, the number of base tables.
        table_sizes (list of int, optional): explicit ``[m_1, ..., m_N]``; their product must be at least V.
        combine (str): how :meth:`forward` and :attr:`weight` merge the N base vectors: ``sum`` (QR "add"),
            ``mean`` or ``mult`` (element-wise product, QR "mult"; see the module docstring for why it keeps the
            items of a quotient row apart).
        init (str): ``auto``, ``normal``, ``scaled`` or ``ones`` (see the module docstring); ``auto`` is ``scaled``
            for ``mult`` and ``normal`` otherwise.
        init_std (float): the scale of a merged vector at initialisation.
        index_of_id (LongTensor, optional): ``[V + 1]``, the 0-based index ``k`` whose mixed-radix digits select
            the rows of each id (distinct on ids 1..V, below ``m_1 * ... * m_N``; e.g. :func:`frequency_spread_order`);
            default ``k = id - 1``. Saved with the model (a buffer).

    Shapes:
        ``indices(ids)``: ``[...] -> [..., N]``; ``base_vectors(ids)``: ``[...] -> [..., N, D]`` (zero for id 0);
        ``forward(ids)``: ``[...] -> [..., D]``; ``weight``: ``[V + 1, D]``.
    """

    COMBINE = ("sum", "mean", "mult")
    INIT = ("auto", "normal", "scaled", "ones")

    def __init__(self, num_items, embedding_dim, compression_rate=2, num_tables=2, table_sizes=None, combine="sum",
                 init="auto", init_std=0.02, index_of_id=None):
        super().__init__()
        self.num_items = int(num_items)
        self.embedding_dim = int(embedding_dim)
        if table_sizes is None:
            table_sizes = qr_table_sizes(self.num_items, compression_rate, num_tables)
        table_sizes = [int(s) for s in table_sizes]
        if not table_sizes or any(s < 1 for s in table_sizes):
            raise ValueError(f"base_table_sizes must be a non-empty list of positive integers, got {table_sizes}")
        if math.prod(table_sizes) < self.num_items:
            raise ValueError(
                f"base_table_sizes {table_sizes} give {math.prod(table_sizes)} distinct combinations, fewer than the "
                f"{self.num_items} items: their product must be at least the number of items"
            )
        if combine not in self.COMBINE:
            raise ValueError(f"combine must be one of {self.COMBINE}, got {combine!r}")
        if init not in self.INIT:
            raise ValueError(f"init must be one of {self.INIT}, got {init!r}")
        self.table_sizes = table_sizes
        self.num_tables = len(table_sizes)
        self.combine = combine
        self.init = ("scaled" if combine == "mult" else "normal") if init == "auto" else init
        self.init_std = float(init_std)
        self.tables = nn.ModuleList(nn.Embedding(size, self.embedding_dim) for size in table_sizes)
        if index_of_id is not None:
            index_of_id = torch.as_tensor(index_of_id, dtype=torch.long)
            real, combos = index_of_id[1:], math.prod(table_sizes)
            if index_of_id.numel() != self.num_items + 1 or real.unique().numel() != self.num_items \
                    or real.min() < 0 or real.max() >= combos:
                raise ValueError(f"index_of_id must give ids 1..{self.num_items} distinct indices in 0..{combos - 1} "
                                 f"(one combination of rows each)")
            self.register_buffer("index_of_id", index_of_id)
        else:
            self.index_of_id = None
        self.reset_parameters()
        self._weight_cache = None

    def reset_parameters(self):
        """Draw the base tables as ``init`` says (a model whose own initialisation overwrote them calls this)."""
        last = self.num_tables - 1
        for n, table in enumerate(self.tables):
            if self.init == "scaled":
                nn.init.normal_(table.weight, mean=0.0, std=self.init_std ** (1.0 / self.num_tables))
            elif self.init == "ones" and n < last:
                nn.init.normal_(table.weight, mean=1.0, std=self.init_std)
            else:
                nn.init.normal_(table.weight, mean=0.0, std=self.init_std)
        self._weight_cache = None

    def extra_repr(self):
        return f"num_items={self.num_items}, embedding_dim={self.embedding_dim}, table_sizes={self.table_sizes}, " \
               f"combine={self.combine!r}, init={self.init!r}, order={'id' if self.index_of_id is None else 'given'}"

    def num_parameters(self):
        """``sum_n m_n * D``."""
        return sum(self.table_sizes) * self.embedding_dim

    def indices(self, ids):
        """Row index in each base table of the ids (1..V; 0 maps like id 1 and is masked by the callers)."""
        k = (ids - 1).clamp(min=0) if self.index_of_id is None else self.index_of_id[ids]
        return qr_indices(k, self.table_sizes)

    def base_vectors(self, ids):
        """The N selected base vectors of each id, ``[..., N, D]``; zero for the padding id 0."""
        q = self.indices(ids)
        vectors = torch.stack([table(q[..., n]) for n, table in enumerate(self.tables)], dim=-2)
        return vectors * (ids > 0).unsqueeze(-1).unsqueeze(-1).to(vectors.dtype)

    def merge(self, vectors):
        """``[..., N, D] -> [..., D]`` by ``combine``."""
        if self.combine == "mult":
            return elementwise_product(vectors)
        merged = vectors.sum(dim=-2)
        return merged / self.num_tables if self.combine == "mean" else merged

    def forward(self, ids):
        return self.merge(self.base_vectors(ids))

    def _cache_key(self):
        return tuple((id(t.weight), t.weight._version) for t in self.tables)

    def all_vectors(self):
        """The merged vector of every id, ``[V + 1, D]`` with a zero row 0 (padding).

        Cached in eval mode while gradients are off (RecBole's evaluation); the cache is dropped by ``train()`` and
        invalidated whenever a base table changes (optimizer step, ``load_state_dict``, a device move), so it never
        serves stale weights.
        """
        if self.training or torch.is_grad_enabled():
            self._weight_cache = None
            return self._all_vectors()
        key = self._cache_key()
        if self._weight_cache is None or self._weight_cache[0] != key:
            self._weight_cache = (key, self._all_vectors())
        return self._weight_cache[1]

    def train(self, mode=True):
        self._weight_cache = None
        return super().train(mode)

    def _all_vectors(self):
        device = self.tables[0].weight.device
        ids = torch.arange(self.num_items + 1, device=device)
        return self.forward(ids)

    @property
    def weight(self):
        """Merged ``[V + 1, D]`` table (as ``nn.Embedding.weight``), so RecBole models can score every item with it."""
        return self.all_vectors()
