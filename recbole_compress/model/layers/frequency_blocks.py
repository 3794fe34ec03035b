"""Frequency-ranked item blocks: the item partition behind block-wise adaptive embeddings and softmaxes.

Items are ranked by descending training frequency (ties by ascending item id, so the order is deterministic) and cut
into ``n`` contiguous blocks (clusters) of that ranking: a head of popular items and tail blocks of rarer ones
(Sun et al., "A Generic Network Compression Framework for Sequential Recommender Systems", SIGIR 2020, §3.1; the same
idea as Baevski & Auli's adaptive input and Grave et al.'s adaptive softmax).

RecBole's item id 0 is the padding id: it is in no block (position, block and local index -1) and never a target.

Block order: the layers index items by their *position* in block order, blocks in frequency order and, inside a
block, items by ascending id. Only block membership carries meaning (the paper's model is invariant to the order
inside a block); ascending ids inside a block make the final permutation of scores to RecBole's catalogue order a
merge of ``n`` increasing runs, about twice as fast as a random permutation on CPU.

Usable under any RecBole backbone::

    blocks = FrequencyBlocks.from_dataset(train_data.dataset, n_clusters=3, split_ratio=0.2)
    emb = AdaptiveEmbedding(blocks, 64, resolve_cluster_dims(64, blocks.n_clusters, factor=4))

The ranking must come from the training split only: RecBole builds a model with ``train_data._dataset``, whose
``inter_feat`` holds one row per training target, so :func:`item_frequencies` counts training targets. A whole
dataset passed instead would leak validation and test targets into the partition (it changes nothing else).
"""
import math
import numbers

import torch
from torch import nn

from recbole_compress.config_keys import DataRule, Key
from recbole_compress.errors import ConfigError


def item_frequencies(dataset, n_items=None):
    """Count of every item id among the interactions of ``dataset`` (a RecBole Dataset), as a LongTensor of length
    ``n_items`` (default ``dataset.item_num``); the padding id 0 gets count 0."""
    n_items = dataset.item_num if n_items is None else n_items
    items = dataset.inter_feat[dataset.iid_field]
    items = torch.as_tensor(items).long().reshape(-1)
    counts = torch.bincount(items, minlength=n_items)[:n_items].clone()
    counts[0] = 0
    return counts


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resolve_cutoffs(n_real_items, n_clusters=3, split_ratio=0.2, cutoffs=None,
                    cutoffs_key="cluster_cutoffs", n_clusters_key="n_clusters", split_ratio_key="split_ratio"):
    """Cumulative block boundaries ``[c_1, ..., c_{n-1}]`` in frequency-rank space (``0 < c_1 < ... < c_{n-1} < K``).

    Args:
        n_real_items (int): K, the number of real items (RecBole's ``n_items - 1``).
        n_clusters (int): n, used with the ratio rule when ``cutoffs`` is None.
        split_ratio (float): rho of the paper's recursive 2:8 rule, ``k_j = max(1, floor(rho * remaining))`` for the
            first n-1 blocks, the last takes the rest (rho = 0.2 gives cut-offs ``[0.2K, 0.36K]`` for n = 3).
        cutoffs (list or None): explicit cumulative cut-offs, all integers (absolute frequency ranks, e.g.
            ``[7000, 15000]``) or all fractions of K in (0, 1) (e.g. ``[0.13, 0.28]``). They define n = len + 1.
        *_key (str): config key names used in error messages.

    Raises:
        ConfigError: a cut-off list that is not strictly increasing inside (0, K), mixes integers and fractions, or
            has values of the wrong type; a ratio outside (0, 1); fewer items than blocks.
    """
    K = int(n_real_items)
    if cutoffs is not None:
        return _explicit_cutoffs(K, cutoffs, cutoffs_key)
    return _ratio_cutoffs(K, n_clusters, split_ratio, n_clusters_key, split_ratio_key)


def _explicit_cutoffs(K, cutoffs, cutoffs_key):
    """Explicit cumulative cut-offs (all integer ranks or all fractions of ``K``) as ranks, checked."""
    if isinstance(cutoffs, (str, bytes)) or not hasattr(cutoffs, "__len__"):
        raise ConfigError(f"{cutoffs_key} must be a list of cumulative cut-offs, got {cutoffs!r}")
    cutoffs = list(cutoffs)
    if len(cutoffs) == 0:
        return []
    if all(_is_int(c) for c in cutoffs):
        resolved = [int(c) for c in cutoffs]
        kind = "absolute ranks"
    elif all(isinstance(c, numbers.Real) and not _is_int(c) and not isinstance(c, bool) for c in cutoffs):
        if not all(0.0 < float(c) < 1.0 for c in cutoffs):
            raise ConfigError(
                f"{cutoffs_key}={cutoffs!r}: fractions of the catalogue must lie in (0, 1); "
                f"use integers for absolute frequency ranks"
            )
        resolved = [int(round(float(c) * K)) for c in cutoffs]
        kind = f"fractions of K={K} (ranks {resolved})"
    else:
        raise ConfigError(
            f"{cutoffs_key}={cutoffs!r}: give either all integers (absolute frequency ranks, e.g. [7000, 15000]) "
            f"or all fractions in (0, 1) (e.g. [0.2, 0.36]), not a mix"
        )
    if any(c <= previous for previous, c in zip([0] + resolved[:-1], resolved)):
        raise ConfigError(
            f"{cutoffs_key}={cutoffs!r} ({kind}) must be strictly increasing and above 0: every block needs "
            f"at least one item"
        )
    if resolved[-1] >= K:
        raise ConfigError(
            f"{cutoffs_key}={cutoffs!r} ({kind}): the last cut-off must be below the number of items K={K} "
            f"so that the last block is not empty"
        )
    return resolved


def _ratio_cutoffs(K, n_clusters, split_ratio, n_clusters_key, split_ratio_key):
    """The paper's recursive rule: block j takes ``max(1, floor(rho * remaining))`` items, the last the rest."""
    if not _is_int(n_clusters) or n_clusters < 1:
        raise ConfigError(f"{n_clusters_key} must be an integer >= 1, got {n_clusters!r}")
    if n_clusters > K:
        raise ConfigError(f"{n_clusters_key}={n_clusters} exceeds the number of items K={K}: every block needs an item")
    if not isinstance(split_ratio, numbers.Real) or isinstance(split_ratio, bool) or not 0.0 < split_ratio < 1.0:
        raise ConfigError(f"{split_ratio_key} must be a float in (0, 1), got {split_ratio!r}")
    resolved, start = [], 0
    for j in range(n_clusters - 1):
        remaining = K - start
        size = max(1, int(math.floor(split_ratio * remaining)))
        size = min(size, remaining - (n_clusters - 1 - j))  # leave one item for every later block
        start += size
        resolved.append(start)
    return resolved


def resolve_cluster_dims(embedding_dim, n_clusters, factor=4, dims=None, dims_key="cluster_dims", factor_key="factor"):
    """Widths ``[d_1, ..., d_n]`` of the blocks: explicit ``dims`` (length n), else ``max(1, d // factor**(j-1))``
    (the paper's geometric progression; factor 4 as in the official code gives d, d/4, d/16, ...)."""
    if dims is not None:
        dims = list(dims)
        if len(dims) != n_clusters or not all(_is_int(x) and x >= 1 for x in dims):
            raise ConfigError(
                f"{dims_key}={dims!r} must list {n_clusters} positive integers, one width per block "
                f"(n_clusters / the cut-offs give {n_clusters} blocks)"
            )
        if dims[0] > embedding_dim:
            raise ConfigError(f"{dims_key}={dims!r}: the head width cannot exceed the embedding size {embedding_dim}")
        return [int(x) for x in dims]
    if not isinstance(factor, numbers.Real) or isinstance(factor, bool) or factor < 1:
        raise ConfigError(f"{factor_key} must be a number >= 1, got {factor!r}")
    return [max(1, int(embedding_dim // (factor ** j))) for j in range(n_clusters)]


class FrequencyBlocks(nn.Module):
    """The partition of items ``1..K`` into frequency-ranked blocks, kept as buffers so that a checkpoint restores the
    same partition.

    Persistent state: ``item_order`` (int32 [K], the item id at every position of block order) and ``bounds``
    ([n+1] cumulative boundaries ``0 = c_0 < ... < c_n = K``). Derived lookup tables (not saved): ``item_position``,
    ``item_cluster`` and ``item_local`` ([n_items], -1 for the padding id), and ``catalogue_index`` ([n_items], the
    position of every item and K for the padding id).

    Args:
        counts (Tensor): [n_items] frequency of every item id (index 0 = padding, ignored).
        cutoffs (list of int): cumulative cut-offs from :func:`resolve_cutoffs`.
    """

    def __init__(self, counts, cutoffs):
        super().__init__()
        counts = torch.as_tensor(counts).long().reshape(-1)
        n_items = counts.numel()
        K = n_items - 1
        if K < 1:
            raise ConfigError("the catalogue has no items: cannot build frequency blocks")
        cutoffs = [int(c) for c in cutoffs]
        bounds = [0] + cutoffs + [K]
        if any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
            raise ConfigError(f"block cut-offs {cutoffs} must be strictly increasing inside (0, {K})")
        # frequency order: descending count, ties by ascending id (stable sort on the negated counts of ids 1..K);
        # cut into blocks, then ascending ids inside every block
        order = torch.sort(-counts[1:], stable=True).indices + 1
        order = torch.cat([order[a:b].sort().values for a, b in zip(bounds[:-1], bounds[1:])])
        self.register_buffer("item_order", order.to(torch.int32))
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.long))
        self._derive()

    def _derive(self):
        item_order = self.item_order.long()
        K = item_order.numel()
        device = item_order.device
        item_position = torch.full((K + 1,), -1, dtype=torch.long, device=device)
        item_position[item_order] = torch.arange(K, device=device)
        position_cluster = torch.bucketize(torch.arange(K, device=device), self.bounds[1:], right=True)
        item_cluster = torch.full((K + 1,), -1, dtype=torch.long, device=device)
        item_cluster[item_order] = position_cluster
        item_local = torch.full((K + 1,), -1, dtype=torch.long, device=device)
        item_local[item_order] = torch.arange(K, device=device) - self.bounds[position_cluster]
        self.register_buffer("item_position", item_position, persistent=False)
        self.register_buffer("item_cluster", item_cluster, persistent=False)
        self.register_buffer("item_local", item_local, persistent=False)
        # column of every item id in a block-order score row extended by one padding column (index K)
        self.register_buffer("catalogue_index", torch.where(item_position < 0, K, item_position), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # the saved partition may differ in size from the one built at construction time (other data)
        for name in ("item_order", "bounds"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._derive()

    @classmethod
    def from_dataset(cls, dataset, n_clusters=3, split_ratio=0.2, cutoffs=None, n_items=None, **keys):
        """Blocks from the item frequencies of a RecBole dataset (pass the training split: ``train_data._dataset``).
        ``keys`` are the config key names for error messages (see :func:`resolve_cutoffs`)."""
        counts = item_frequencies(dataset, n_items)
        return cls(counts, resolve_cutoffs(counts.numel() - 1, n_clusters, split_ratio, cutoffs, **keys))

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def n_items(self):
        """RecBole's ``n_items``: K real items plus the padding id."""
        return self.item_order.numel() + 1

    @property
    def n_real_items(self):
        return self.item_order.numel()

    @property
    def n_clusters(self):
        return self.bounds.numel() - 1

    @property
    def cutoffs(self):
        """Cumulative cut-offs ``[c_1, ..., c_{n-1}]`` (the ``cutoffs`` of ``torch.nn.AdaptiveLogSoftmaxWithLoss``)."""
        return [int(b) for b in self.bounds[1:-1]]

    @property
    def sizes(self):
        """Block sizes ``[k_1, ..., k_n]``."""
        b = [int(x) for x in self.bounds]
        return [b[j + 1] - b[j] for j in range(len(b) - 1)]

    # -- orders -----------------------------------------------------------------------------------------------
    def to_catalogue_order(self, scores, pad_value=float("-inf")):
        """Scores in block order ``[..., K]`` to RecBole's item-id order ``[..., n_items]`` (column 0 = ``pad_value``)."""
        out = scores.new_full(scores.shape[:-1] + (self.n_items,), pad_value)
        out[..., 1:] = scores.index_select(-1, self.item_position[1:])
        return out

    def extra_repr(self):
        return f"n_items={self.n_items}, sizes={self.sizes}"


def blocks_from_config(config, dataset, embedding_dim):
    """The frequency blocks and block widths a model's config asks for, from the item counts of ``dataset`` (pass the
    training split). Reads ``n_clusters``, ``cluster_split_ratio``, ``cluster_cutoffs``, ``cluster_dim_factor`` and
    ``cluster_dims`` (the keys of ``CpRec.yaml`` / ``GRU4RecAdaptive.yaml``; any model whose YAML has them can use
    this). Returns ``(blocks, cluster_dims)``; bad values raise :class:`ConfigError` naming the key."""
    blocks = FrequencyBlocks.from_dataset(
        dataset,
        n_clusters=config["n_clusters"],
        split_ratio=config["cluster_split_ratio"],
        cutoffs=config["cluster_cutoffs"],
        cutoffs_key="cluster_cutoffs",
        n_clusters_key="n_clusters",
        split_ratio_key="cluster_split_ratio",
    )
    dims = resolve_cluster_dims(
        embedding_dim, blocks.n_clusters, factor=config["cluster_dim_factor"], dims=config["cluster_dims"],
        dims_key="cluster_dims", factor_key="cluster_dim_factor",
    )
    return blocks, dims


#: The keys :func:`blocks_from_config` reads, for the ``config_keys`` of a model that uses it.
BLOCK_KEYS = (
    Key("n_clusters", int, low=1),
    Key("cluster_split_ratio", float, low=0, high=1, low_open=True, high_open=True),
    Key("cluster_cutoffs", list, items=float, low=0, low_open=True, none_ok=True, nonempty=True),
    Key("cluster_dim_factor", int, low=1),
    Key("cluster_dims", list, items=int, low=1, none_ok=True, nonempty=True),
)


def _blocks_fit_the_catalogue(config, dataset):
    """The cut-offs and block widths must fit this catalogue (checked on the loaded dataset, before training)."""
    if not (config["adaptive_input"] or config["adaptive_output"]):
        return None
    try:
        blocks_from_config(config, dataset, config["embedding_size"])
    except ConfigError as e:
        return str(e)
    return None


#: The data rule of a model with adaptive item blocks (``embedding_size`` is the full width).
BLOCKS_RULE = DataRule("cluster_cutoffs", _blocks_fit_the_catalogue)
