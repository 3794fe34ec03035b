"""Temporal context-aware composition of base embeddings (LSAN, Li et al., CIKM 2021, §3.1, Eq.(6)-(8)).

For position ``i`` of a sequence the *temporal context* is the triplet ``r_i = (c_{i-1}, c_i, slot_i)``: the category
of the previous item (a padding label at the first position), the category of the current item, and the discrete
time slot of the interaction (the hour of the day by default). Its embedding ``r_i`` weights the ``N`` base vectors
``e^1_i .. e^N_i`` of the item (the selected rows of a compositional embedding, e.g.
:class:`~recbole_compress.model.layers.compositional_embedding.QuotientRemainderEmbedding`):

    s^n_i = u^T SiLU(W_e e^n_i + W_r r_i + b)        alpha_i = softmax_n(s_i)        (Eq.(6), additive score)
    h_i   = sum_n alpha^n_i e^n_i                                                          (Eq.(7))
    h~_i  = MLP([h_i ; r_i])       MLP: 2D -> D                                            (Eq.(8))

Building blocks, each usable under any backbone:

- :func:`shift_right`, :func:`item_categories` (one category per item from a RecBole item
  feature, ``token`` or ``token_seq``);
- :class:`TemporalContextEmbedding`: the context table, ``joint`` (the paper: one row per context tuple seen in the
  training data, plus an UNK row 0) or ``factorized`` (a parameter-light variant: ``E_prev[c_prev] + E_cur[c_cur] +
  E_slot[slot]``);
- :class:`ContextAwareComposition`: Eq.(6)-(8).

The exact form of Eq.(6) is lost in the paper's text (only "SiLU" survives): the additive score above is our
reconstruction, ``score: dot`` (``SiLU(W_r r + b)^T e^n / sqrt(D)``) the alternative.

Merges that keep the items of a quotient row apart. With quotient-remainder base tables, Eq.(7)'s weighted sum gives
two items of one quotient row ``h = a_1 e^1_r + a_2 e^2_q`` and ``a_1' e^1_r' + a_2' e^2_q``: whatever the weights,
they differ along the remainder rows, which every quotient row shares, so the input cannot tell the pairs' members
apart except through one global direction. The paper itself names "element-wise addition/multiplication" as the
fixed merges its attention generalises, so we add:

- ``mult``: ``h = e^1 * ... * e^N`` (element-wise), the item's own vector (pair members differ by
  ``(e^1_r - e^1_r') * e^2_q``, a different vector for every quotient row); the context enters through Eq.(8) only.
- ``attention_mult``: Eq.(6)-(7) over ``N + 1`` candidates, the product and the ``N`` base vectors:
  ``h = a_0 (e^1 * ... * e^N) + sum_n a_n e^n`` with ``a = softmax(s_0, s_1, ..., s_N)`` scored as in Eq.(6). The
  context still chooses how much of each base vector to use, as in the paper, and the item's own (product) vector is
  one of the choices, so the composition distinguishes the items of a quotient row whenever ``a_0 > 0``. Eq.(7) is
  the case ``a_0 = 0`` and ``mult`` the case ``a_0 = 1``; no parameter is added.
"""
import math

import numpy as np
import torch
from torch import nn

from recbole_compress.model.layers.compositional_embedding import elementwise_product

PAD_CATEGORY = 0


def shift_right(x, fill=PAD_CATEGORY):
    """``y[:, 0] = fill``, ``y[:, t] = x[:, t - 1]``: the previous position's value along dim 1."""
    return torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)


def item_categories(dataset, field, select="last"):
    """One category id per item id, ``[n_items]`` (0 = padding item / no category), from a RecBole item feature.

    Args:
        dataset: a RecBole dataset whose ``item_feat`` holds ``field`` (row = item id).
        field (str): a ``token`` or ``token_seq`` item field.
        select (str): for ``token_seq`` fields, keep the ``last`` or the ``first`` token of each item.

    Returns:
        tuple: ``(item2cat LongTensor [n_items], num_categories C)``; category ids run from 1 to C.
    """
    from recbole.utils import FeatureSource, FeatureType

    if select not in ("last", "first"):
        raise ValueError(f"category_select must be 'last' or 'first', got {select!r}")
    if field not in dataset.field2type or dataset.field2source.get(field) != FeatureSource.ITEM:
        raise KeyError(field)
    values = dataset.item_feat[field]
    if not isinstance(values, torch.Tensor):  # pandas before the dataset is built
        raise ValueError(f"item feature {field!r} is not built yet: pass the dataset of a data loader")
    ftype = dataset.field2type[field]
    if ftype == FeatureType.TOKEN:
        cats = values.long().clone()
    elif ftype == FeatureType.TOKEN_SEQ:
        values = values.long()
        present = values > 0
        n = present.sum(dim=1)
        if select == "first":
            cats = values[:, 0].clone()
        else:
            cats = values.gather(1, (n - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        cats[n == 0] = PAD_CATEGORY
    else:
        raise ValueError(f"category_field {field!r} must be a token or token_seq item field, not {ftype.value}")
    cats[0] = PAD_CATEGORY
    return cats, dataset.num(field) - 1


class TemporalContextEmbedding(nn.Module):
    """Dense embedding of the context triplet ``(c_prev, c_cur, slot)``.

    Args:
        num_categories (int): C; category ids run 1..C and 0 is the padding label.
        num_slots (int): S, the number of time slots.
        embedding_dim (int): D.
        mode (str): ``joint`` (one row per context tuple of ``vocabulary`` plus the UNK row 0, as in the paper) or
            ``factorized`` (``(2(C+1) + S) * D`` parameters).
        vocabulary (LongTensor, optional): the context keys of the joint table, see :meth:`keys` and
            :meth:`build_vocabulary`; required for ``joint``.
        init_std (float): rows are drawn from N(0, init_std).
    """

    MODES = ("joint", "factorized")

    def __init__(self, num_categories, num_slots, embedding_dim, mode="joint", vocabulary=None, init_std=0.02):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"context_mode must be one of {self.MODES}, got {mode!r}")
        self.num_categories = int(num_categories)
        self.num_slots = int(num_slots)
        self.embedding_dim = int(embedding_dim)
        self.mode = mode
        if mode == "joint":
            if vocabulary is None:
                raise ValueError("the joint context table needs its vocabulary of context keys (build_vocabulary)")
            vocabulary = torch.unique(torch.as_tensor(vocabulary, dtype=torch.long))  # sorted
            self.register_buffer("vocabulary", vocabulary)
            self.table = nn.Embedding(len(vocabulary) + 1, self.embedding_dim)
            nn.init.normal_(self.table.weight, std=init_std)
        else:
            self.prev_table = nn.Embedding(self.num_categories + 1, self.embedding_dim)
            self.cur_table = nn.Embedding(self.num_categories + 1, self.embedding_dim)
            self.slot_table = nn.Embedding(self.num_slots, self.embedding_dim)
            for table in (self.prev_table, self.cur_table, self.slot_table):
                nn.init.normal_(table.weight, std=init_std)

    def extra_repr(self):
        size = f", contexts={len(self.vocabulary)}" if self.mode == "joint" else ""
        return f"mode={self.mode!r}, categories={self.num_categories}, slots={self.num_slots}{size}"

    @staticmethod
    def keys(c_prev, c_cur, slot, num_categories, num_slots):
        """The integer key of each tuple: ``(c_prev * (C + 1) + c_cur) * S + slot``."""
        return (c_prev.long() * (num_categories + 1) + c_cur.long()) * num_slots + slot.long()

    @classmethod
    def build_vocabulary(cls, c_prev, c_cur, slot, num_categories, num_slots, valid=None):
        """Sorted unique keys of the tuples at the ``valid`` positions (all positions when ``valid`` is None)."""
        keys = cls.keys(c_prev, c_cur, slot, num_categories, num_slots)
        if valid is not None:
            keys = keys[valid]
        return torch.unique(keys.reshape(-1))

    def context_ids(self, c_prev, c_cur, slot):
        """Row of each tuple in the joint table: ``1 + position in the vocabulary``, or 0 (UNK) if never seen."""
        keys = self.keys(c_prev, c_cur, slot, self.num_categories, self.num_slots)
        if len(self.vocabulary) == 0:
            return torch.zeros_like(keys)
        pos = torch.searchsorted(self.vocabulary, keys.reshape(-1)).reshape(keys.shape)
        pos_c = pos.clamp(max=len(self.vocabulary) - 1)
        found = self.vocabulary[pos_c] == keys
        return torch.where(found, pos_c + 1, torch.zeros_like(pos_c))

    def forward(self, c_prev, c_cur, slot):
        if self.mode == "joint":
            return self.table(self.context_ids(c_prev, c_cur, slot))
        return self.prev_table(c_prev) + self.cur_table(c_cur) + self.slot_table(slot)


_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class ContextAwareComposition(nn.Module):
    """Merge of the N base vectors of each item under its context, and the context injection (Eq.(6)-(8)).

    Args:
        embedding_dim (int): D.
        merge (str): ``attention`` (Eq.(6)-(7): weights from the context), ``attention_mult`` (the same attention
            over the element-wise product of the base vectors and the base vectors, see the module docstring),
            ``sum`` or ``mean`` (fixed weights 1 or 1/N: the plain QR merge), or ``mult`` (the element-wise
            product); the context is still injected by the MLP when ``inject``.
        score (str): the attention score, ``additive`` (``u^T SiLU(W_e e + W_r r + b)``, ``2D^2 + 2D`` parameters)
            or ``dot`` (``SiLU(W_r r + b)^T e / sqrt(D)``, ``D^2 + D``).
        inject (bool): apply Eq.(8), ``MLP([h; r])``; False returns ``h`` (Eq.(7)) itself.
        mlp_hidden_layers (int): extra ``Linear(D, D) + act`` layers after the first ``Linear(2D, D) + act``.
        mlp_act (str): activation of the MLP: silu, relu, gelu, tanh or sigmoid.

    ``forward(base [..., N, D], context [..., D]) -> (h~ [..., D], alpha [..., K])``: ``K = N`` (for ``mult`` the
    weights are the exponents, 1), ``K = N + 1`` for ``attention_mult`` (``alpha[..., 0]`` weighs the product).
    """

    MERGES = ("attention", "attention_mult", "sum", "mean", "mult")
    ATTENTIVE = ("attention", "attention_mult")
    SCORES = ("additive", "dot")

    def __init__(self, embedding_dim, merge="attention", score="additive", inject=True, mlp_hidden_layers=0,
                 mlp_act="silu"):
        super().__init__()
        if merge not in self.MERGES:
            raise ValueError(f"composition must be one of {self.MERGES}, got {merge!r}")
        if score not in self.SCORES:
            raise ValueError(f"composition_score must be one of {self.SCORES}, got {score!r}")
        if mlp_act not in _ACTIVATIONS:
            raise ValueError(f"context_mlp_act must be one of {sorted(_ACTIVATIONS)}, got {mlp_act!r}")
        if int(mlp_hidden_layers) < 0:
            raise ValueError(f"context_mlp_hidden_layers must be >= 0, got {mlp_hidden_layers}")
        d = int(embedding_dim)
        self.embedding_dim = d
        self.merge = merge
        self.score = score
        if merge in self.ATTENTIVE:
            self.context_proj = nn.Linear(d, d)  # W_r and the bias b
            if score == "additive":
                self.base_proj = nn.Linear(d, d, bias=False)  # W_e
                self.score_vector = nn.Linear(d, 1, bias=False)  # u
            self.act = nn.SiLU()
        self.inject = bool(inject)
        if self.inject:
            layers = [nn.Linear(2 * d, d), _ACTIVATIONS[mlp_act]()]
            for _ in range(int(mlp_hidden_layers)):
                layers += [nn.Linear(d, d), _ACTIVATIONS[mlp_act]()]
            self.mlp = nn.Sequential(*layers)

    def candidates(self, base):
        """The vectors the weights apply to: the N base vectors, with their element-wise product first for
        ``attention_mult``."""
        if self.merge == "attention_mult":
            return torch.cat([elementwise_product(base).unsqueeze(-2), base], dim=-2)
        return base

    def weights(self, base, context):
        """alpha: the softmax over the candidates of their scores under the context (attention), or the fixed
        weights of ``sum``/``mult`` (1) and ``mean`` (1/N)."""
        return self._weights(self.candidates(base), context)

    def _weights(self, candidates, context):
        if self.merge not in self.ATTENTIVE:
            value = 1.0 / candidates.shape[-2] if self.merge == "mean" else 1.0
            return candidates.new_full(candidates.shape[:-1], value)
        r = self.context_proj(context).unsqueeze(-2)  # [..., 1, D]
        if self.score == "additive":
            scores = self.score_vector(self.act(self.base_proj(candidates) + r)).squeeze(-1)
        else:
            scores = (self.act(r) * candidates).sum(-1) / math.sqrt(self.embedding_dim)
        return torch.softmax(scores, dim=-1)

    def forward(self, base, context):
        candidates = self.candidates(base)
        alpha = self._weights(candidates, context)
        if self.merge == "mult":
            h = elementwise_product(base)
        else:
            h = (alpha.unsqueeze(-1) * candidates).sum(dim=-2)
        if self.inject:
            h = self.mlp(torch.cat([h, context], dim=-1))
        return h, alpha
