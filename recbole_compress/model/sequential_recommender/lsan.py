r"""
LSAN
################################################

Reference:
    Yang Li, Tong Chen, Peng-Fei Zhang and Hongzhi Yin. "Lightweight Self-Attentive Sequential Recommendation."
    In CIKM 2021. https://doi.org/10.1145/3459637.3482448

LSAN replaces SASRec's item table by ``N`` quotient-remainder base tables whose vectors are merged by an attention
conditioned on the *temporal context* of each position (previous item's category, current item's category, hour of
the day), and its multi-head self-attention by *twin attention*: ``H`` depth-wise convolution heads (local patterns)
beside ``H`` self-attention heads (global patterns), followed by a point-wise GeLU FFN; one layer; full-softmax
cross-entropy over the catalogue.

Where we depart from (or had to reconstruct) the paper, and why:

- The paper's equation bodies are lost in the available text. Eq.(6), the attention score over the base vectors, is
  reconstructed as additive attention ``u^T SiLU(W_e e^n + W_r r + b)`` (``composition_score: dot`` is the
  alternative); the MLP of Eq.(8) is ``Linear(2D, D) + SiLU``.
- The output layer is tied to the base tables: a separate ``V x D`` softmax matrix would make LSAN larger than
  SASRec, against the paper's "about 60 % of SASRec's parameters at m=2" (``output_layer: full`` is the literal
  reading). The paper never says how the output vectors are composed. We compose them by the element-wise product
  ``W_p[v] = E_1[k mod m] * E_2[k div m]`` (``output_composition: mult``, the default of Shi et al.'s QR trick) plus
  a per-item bias. The additive merge (``mean``/``sum``) makes the items of a quotient row differ by one global
  vector ``E_1[0] - E_1[1]``: every user then orders the two items of every row the same way (bias aside); the
  ablation in docs/LSAN.md measures what that costs.
- The input merge (``composition``): Eq.(7)'s attention-weighted sum has the same blind spot, so the default,
  ``attention_mult``, runs the paper's context attention over the product of the base vectors *and* the base vectors
  (``h = a_0 e^1 * e^2 + a_1 e^1 + a_2 e^2``, weights from Eq.(6)): the context still weighs the base vectors, and
  the item's own vector is one of the candidates (see
  :class:`~recbole_compress.model.layers.temporal_context.ContextAwareComposition`). ``attention`` is the paper's
  Eq.(7), ``mult`` the product alone. A product of two ``N(0, 0.02)`` rows is tiny, so with a product the base tables
  are drawn from ``N(0, sqrt(0.02))`` (``base_table_init``).
- Which items share rows (``base_table_order``, not in the paper, which uses the ids): ``id`` pairs neighbouring
  ids (RecBole numbers items in order of first appearance, so neighbours are often items one user met in turn); ``frequency`` gives each of the most frequent
  items a quotient row of its own and pairs it with a rarer one
  (:func:`~recbole_compress.model.layers.compositional_embedding.frequency_spread_order`); ``cooccurrence`` puts
  items that follow one another in the training sequences into the same quotient row
  (:func:`~recbole_compress.model.layers.compositional_embedding.cooccurrence_group_order`); both from the training
  split only. ``complementary`` changes the partition: the quotient-remainder rows split into N near-equal pairwise
  coprime tables, item k taking row k mod m_n in each (Shi et al.'s complementary partitions,
  :func:`~recbole_compress.model.layers.compositional_embedding.complementary_index`), so that no base table is a
  remainder table of m rows shared by every item and the items tied to one item differ from table to table.
- The context table is ``factorized`` by default (``E_prev[c_prev] + E_cur[c_cur] + E_slot[slot]``,
  ``(2(C + 1) + S) D`` parameters): the paper's joint table (``context_mode: joint``) has one row per context tuple
  seen in training, up to ``(C + 1)^2 S``, which on ml-100k is several times the item tables and makes LSAN larger
  than SASRec (docs/LSAN.md).
- ``hidden_size`` defaults to 64 (the paper: 128), so that LSAN with no flag is smaller than SASRec's RecBole default.
- Residual connections, LayerNorm and dropout are never mentioned by the paper; we use SASRec's post-LN residual
  blocks, an embedding LayerNorm and dropout 0.5 (``use_residual_ln: False`` removes the residual blocks).
- Attention heads are full width (``D`` per head), as the paper's cost ``O(H(LD + 3D^2))`` implies.
- The joint context table holds the context tuples seen in the training split, plus one UNK row for unseen ones.
- Hour slots come from the dataset field ``<TIME_FIELD>_slot`` that :class:`LSANDataset` computes from the raw
  timestamps before RecBole's normalisation, so that LSAN keeps every other model's split (see
  :mod:`recbole_compress.data.time_slot_dataset`).
- Without context (``use_context: False``) the base vectors are merged without attention: ``attention`` falls back to
  their sum (the QR embedding of the paper's first ablation), ``attention_mult`` to their product; only the position
  embeddings carry order.

History categories and times come from the item features and ``<TIME_FIELD>_slot_list``; the target's own columns in
the batch (its ``timestamp``, its joined item features) are never read.
"""
import math
from logging import getLogger

import torch
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.data.time_slot_dataset import TimeSlotSequentialDataset, register_dataset, slot_field_name
from recbole_compress.model.layers.compositional_embedding import (
    QuotientRemainderEmbedding,
    complementary_index,
    complementary_table_sizes,
    cooccurrence_group_order,
    elementwise_product,
    frequency_spread_order,
    not_smaller_problem,
    pairwise_coprime,
    qr_table_sizes,
)
from recbole_compress.model.layers.frequency_blocks import item_frequencies
from recbole_compress.model.layers.temporal_context import (
    ContextAwareComposition,
    TemporalContextEmbedding,
    item_categories,
    shift_right,
)
from recbole_compress.model.layers.twin_attention import TwinAttentionEncoder
from recbole_compress.config_keys import DataRule, Key, Relation
from recbole_compress.errors import ConfigError


class LSANDataset(TimeSlotSequentialDataset):
    """The dataset RecBole's ``create_dataset`` builds for LSAN: RecBole's sequential dataset (same split) plus the
    hour slot of every interaction."""


register_dataset("LSAN", LSANDataset)


def _table_sizes(config, dataset):
    """The base tables' rows: ``base_table_sizes``, or ``compression_rate`` m and ``num_base_tables`` N (for the
    complementary partition, the same number of rows split into N near-equal pairwise coprime tables)."""
    if config["base_table_sizes"] is not None:
        return list(config["base_table_sizes"])
    items = dataset.item_num - 1
    sizes = qr_table_sizes(items, config["compression_rate"], config["num_base_tables"])
    if config["base_table_order"] == "complementary" and len(sizes) > 1:
        return complementary_table_sizes(items, sum(sizes), len(sizes))
    return sizes


def base_table_sizes_problem(config, dataset):
    """A message when explicit ``base_table_sizes`` cannot give every item its own combination of rows, else None."""
    sizes, items = config["base_table_sizes"], dataset.item_num - 1
    if config["embedding_type"] == "compositional" and sizes is not None and math.prod(sizes) < items:
        return (f"their product {math.prod(sizes)} must be at least the number of items ({items}), so that every item "
                f"gets its own combination of base rows")
    return None


def compression_problem(config, dataset):
    """A message when the base tables are not smaller than the item table they replace, else None."""
    if config["embedding_type"] != "compositional":
        return None
    try:
        sizes = _table_sizes(config, dataset)
    except ValueError as e:  # the complementary split of too few rows
        return f"{e}: choose a smaller compression_rate"
    problem = not_smaller_problem(sizes, dataset.item_num - 1)
    return problem and problem + ", or embedding_type: full for an uncompressed table"


def context_problem(config, dataset):
    """A message when the temporal context (``use_context: True``) needs a field the dataset lacks, unless
    ``allow_missing_context`` accepts the constant 0 in its place, else None."""
    if not config["use_context"] or config["allow_missing_context"]:
        return None
    missing = []
    field = config["category_field"]
    if field not in dataset.field2type or field not in dataset.field2source or \
            dataset.field2source[field].value != "item":
        missing.append(f"the item category field {field!r} (category_field): load it as an item feature "
                       f"(load_col: {{item: [{config['ITEM_ID_FIELD']}, {field}]}}) or set category_field to the "
                       f"dataset's category field")
    elif dataset.field2type[field].value not in ("token", "token_seq"):
        return (f"category_field {field!r} must be a token or token_seq item field, not "
                f"{dataset.field2type[field].value}")
    time_field = config["TIME_FIELD"]
    if time_field not in dataset.field2type:
        missing.append(f"the interaction time field {time_field!r} (TIME_FIELD): load it (load_col: {{inter: [..., "
                       f"{time_field}]}}) and set TIME_FIELD")
    if not missing:
        return None
    return (f"LSAN's temporal context needs {' and '.join(missing)}. Or run without context: use_context: False "
            f"(position-only), or allow_missing_context: True (the missing part of the context is the constant 0)")


class LSAN(SequentialRecommender):
    r"""LSAN: quotient-remainder base tables merged under temporal context, and twin attention (conv + self-attention).

    See the module docstring for the paper and our departures from it; ``properties/model/LSAN.yaml`` for the keys.
    """

    counterpart = "SASRec"
    config_keys = (
        Key("hidden_size", int, low=1),
        Key("n_layers", int, low=1),
        Key("n_heads", int, low=1),
        Key("head_width", str, choices=("full", "split")),
        Key("twin_mode", str, choices=("twin", "sa_only", "conv_only")),
        Key("conv_kernel_size", int, low=1),
        Key("conv_padding", str, choices=("centered", "causal")),
        Key("attn_mask", str, choices=("causal", "bidirectional")),
        Key("inner_size", int, low=1, none_ok=True),
        Key("hidden_act", str, choices=("gelu", "relu", "swish", "silu", "tanh", "sigmoid")),
        Key("hidden_dropout_prob", float, low=0, high=1, high_open=True),
        Key("attn_dropout_prob", float, low=0, high=1, high_open=True),
        Key("layer_norm_eps", float, low=0, low_open=True),
        Key("use_residual_ln", bool),
        Key("initializer_range", float, low=0),
        Key("embedding_type", str, choices=("compositional", "full")),
        Key("num_base_tables", int, low=1),
        Key("compression_rate", int, low=1),
        Key("base_table_sizes", list, items=int, low=1, nonempty=True, none_ok=True),
        Key("base_table_init", str, choices=("auto", "normal", "scaled", "ones")),
        Key("base_table_order", str, choices=("id", "frequency", "cooccurrence", "complementary"), neutral="id"),
        Key("composition", str, choices=("attention", "attention_mult", "sum", "mean", "mult")),
        Key("composition_score", str, choices=("additive", "dot")),
        Key("use_context", bool),
        Key("context_mode", str, choices=("joint", "factorized")),
        Key("category_field", str),
        Key("category_select", str, choices=("last", "first")),
        Key("num_time_slots", int, low=1),
        Key("time_slot_seconds", float, low=0, low_open=True),
        Key("context_mlp_hidden_layers", int, low=0),
        Key("context_mlp_act", str, choices=("silu", "relu", "gelu", "tanh", "sigmoid")),
        Key("allow_missing_context", bool),
        Key("output_layer", str, choices=("tied", "full")),
        Key("output_composition", str, choices=("mean", "sum", "mult")),
        Key("output_bias", bool),
        Key("loss_type", str, choices=("CE",)),
    )
    config_relations = (
        Relation(("base_table_sizes", "base_table_order"), lambda c: pairwise_coprime(c["base_table_sizes"]),
                 "the complementary partition needs pairwise coprime base_table_sizes (e.g. consecutive integers)",
                 when=lambda c: c["base_table_order"] == "complementary" and c["base_table_sizes"] is not None),
    )
    data_rules = (DataRule("base_table_sizes", base_table_sizes_problem), DataRule("compression_rate", compression_problem),
                  DataRule("use_context", context_problem))

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.logger = getLogger()

        # ---- configuration (declared in config_keys, checked before the run starts) -----------------------------
        self.hidden_size = config["hidden_size"]
        self.attn_mask = config["attn_mask"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.embedding_type = config["embedding_type"]
        self.composition = config["composition"]
        self.composition_score = config["composition_score"]
        self.use_context = config["use_context"]
        self.context_mode = config["context_mode"]
        self.category_select = config["category_select"]
        self.num_time_slots = config["num_time_slots"]
        self.time_slot_seconds = config["time_slot_seconds"]
        self.allow_missing_context = config["allow_missing_context"]
        self.output_layer = config["output_layer"]
        self.output_composition = config["output_composition"]
        self.base_table_init = config["base_table_init"]
        self.output_bias = config["output_bias"]
        self.loss_type = config["loss_type"]
        self.num_real_items = self.n_items - 1  # V; id 0 is padding

        # ---- item embedding (§3.1): quotient-remainder base tables, or the full table of LSAN_full.emb ------------
        self.item_embedding = self._build_item_embedding(config, dataset)

        # ---- temporal context-aware composition (§3.1, Eq.(6)-(8)) -------------------------------------------------
        self.has_categories = self.has_time_slots = False
        self.SLOT_SEQ = None
        if self.use_context:
            self._build_context(config, dataset)
            self._build_composition(config)
        else:
            self._merge_without_context()

        # ---- twin attention (§3.2) --------------------------------------------------------------------------------
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = FastDropout(self.hidden_dropout_prob)
        self.encoder = self._build_encoder(config)

        # ---- prediction layer, Eq.(14) --------------------------------------------------------------------------
        if self.output_layer == "full":
            self.output_projection = nn.Linear(self.hidden_size, self.n_items, bias=self.output_bias)
        elif self.output_bias:
            self.output_bias_vector = nn.Parameter(torch.zeros(self.n_items))

        self.apply(self._init_weights)
        if self.embedding_type == "compositional":
            self.item_embedding.reset_parameters()  # its own initialisation (a product needs another scale)
        if self.output_layer == "tied" and self.output_bias:
            nn.init.zeros_(self.output_bias_vector)

    def _build_item_embedding(self, config, dataset):
        """The quotient-remainder base tables (``embedding_type: compositional``), or the full table."""
        if self.embedding_type != "compositional":
            return nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.num_base_tables = config["num_base_tables"]
        self.compression_rate = config["compression_rate"]
        self.base_table_order = config["base_table_order"]
        sizes = _table_sizes(config, dataset)
        return QuotientRemainderEmbedding(
            self.num_real_items, self.hidden_size, table_sizes=sizes,
            combine=self.output_composition, init=self._base_init(), init_std=self.initializer_range,
            index_of_id=self._base_table_order(dataset, sizes),
        )

    def _build_encoder(self, config):
        """Twin attention (§3.2): ``n_heads`` depth-wise convolution heads beside ``n_heads`` self-attention heads,
        projected to D, then a point-wise FFN; ``n_layers`` such layers."""
        self.n_layers, self.n_heads = config["n_layers"], config["n_heads"]
        self.twin_mode, self.head_width = config["twin_mode"], config["head_width"]
        self.conv_kernel_size, self.conv_padding = config["conv_kernel_size"], config["conv_padding"]
        self.inner_size = config["inner_size"] or self.hidden_size
        return TwinAttentionEncoder(
            n_layers=self.n_layers, hidden_size=self.hidden_size, n_heads=self.n_heads,
            kernel_size=self.conv_kernel_size, mode=self.twin_mode, head_width=self.head_width,
            conv_padding=self.conv_padding, inner_size=self.inner_size, hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=self.layer_norm_eps, use_residual_ln=config["use_residual_ln"],
        )

    def _build_composition(self, config):
        """Eq.(6)-(8): attention over the base vectors under the context, and the context injection MLP."""
        n_base = self.item_embedding.num_tables if self.embedding_type == "compositional" else 1
        self.context_composition = ContextAwareComposition(
            self.hidden_size, merge=self.composition if n_base > 1 else "sum", score=self.composition_score,
            inject=True, mlp_hidden_layers=config["context_mlp_hidden_layers"], mlp_act=config["context_mlp_act"],
        )

    def _merge_without_context(self):
        """Without context there is nothing to attend with: the attention merges fall back to a plain sum
        (``attention``, the paper's QR ablation) or product (``attention_mult``)."""
        self.composition = {"attention": "sum", "attention_mult": "mult"}.get(self.composition, self.composition)
        self.logger.info(
            "LSAN without temporal context (use_context=False): position-only order information, "
            + ("the base vectors are merged by a plain " + self.composition.upper()
               + " (the context-free QR embedding)" if self.embedding_type == "compositional"
               else "a full item table")
        )

    # ------------------------------------------------------------------------------------------------------------
    # context
    # ------------------------------------------------------------------------------------------------------------

    def _base_table_order(self, dataset, sizes):
        """Which items share base-table rows (``base_table_order``), from the training split; None: the id order."""
        if self.base_table_order == "frequency":
            return frequency_spread_order(item_frequencies(dataset, self.n_items), sizes)
        if self.base_table_order == "complementary":
            return complementary_index(self.num_real_items, sizes)
        if self.base_table_order == "cooccurrence":  # each training target with the item just before it
            feat = dataset.inter_feat
            lengths = feat[dataset.item_list_length_field].long()
            previous = feat[dataset.item_id_list_field][torch.arange(len(lengths)), (lengths - 1).clamp(min=0)]
            return cooccurrence_group_order(previous, feat[dataset.iid_field], self.num_real_items, sizes)
        return None

    def _base_init(self):
        """The base tables' initialisation: ``base_table_init``, where ``auto`` is ``scaled`` when a product of base
        vectors is used (input or output), else ``normal``."""
        if self.base_table_init != "auto":
            return self.base_table_init
        uses_product = self.output_composition == "mult" or self.composition in ("mult", "attention_mult")
        return "scaled" if uses_product else "normal"

    def _missing(self, what):
        """A part of the context the dataset lacks (allowed by ``allow_missing_context``; see
        :func:`context_problem`) is the constant 0."""
        self.logger.warning(f"allow_missing_context: True: {what} missing, using the constant 0 in its place")

    def _build_context(self, config, dataset):
        self._dataset_name = config["dataset"]
        d = self.hidden_size
        category_field = config["category_field"]
        # categories of items, from the item features (never from the batch's target columns)
        try:
            item2cat, num_categories = item_categories(dataset, category_field, self.category_select)
            self.has_categories = True
        except KeyError:
            item2cat, num_categories = torch.zeros(self.n_items, dtype=torch.long), 0
            self._missing(f"the item category field {category_field!r} (category_field)")
        self.register_buffer("item2cat", item2cat)
        self.num_categories = int(num_categories)

        # hour slots of history items, from <TIME_FIELD>_slot_list (computed by LSANDataset before normalisation)
        time_field = config["TIME_FIELD"]
        slot_field = slot_field_name(config)
        if time_field in dataset.field2type and slot_field in dataset.field2type:
            self.SLOT_FIELD = slot_field
            self.SLOT_SEQ = slot_field + config["LIST_SUFFIX"]
            self.has_time_slots = True
        elif time_field in dataset.field2type:
            raise ConfigError(
                f"the dataset has no {slot_field!r} field: build it with RecBole's create_dataset and this config "
                f"(model LSAN), which makes an LSANDataset that computes the hour slots of {time_field!r}"
            )
        else:
            self._missing(f"the interaction time field {time_field!r} (TIME_FIELD)")

        # vocabulary of context tuples (joint table): every position of the training split
        vocabulary = None
        if self.context_mode == "joint" or self.has_time_slots:
            c_prev, c_cur, slot, valid = self._training_contexts(dataset)
            if self.context_mode == "joint":
                vocabulary = TemporalContextEmbedding.build_vocabulary(
                    c_prev, c_cur, slot, self.num_categories, self.num_time_slots, valid
                )
            if self.has_time_slots:
                used = torch.unique(slot[valid])
                self.slots_in_training = int(used.numel())
                if used.numel() <= 1:
                    self.logger.warning(
                        f"the time slot takes a single value in the training data: the timestamps of "
                        f"{self._dataset_name!r} carry no time of day (positions or day granularity); the context "
                        f"reduces to the categories"
                    )
        self.context_embedding = TemporalContextEmbedding(
            self.num_categories, self.num_time_slots, d, mode=self.context_mode, vocabulary=vocabulary
        )
        self.logger.info(
            f"LSAN temporal context: categories from item feature {category_field!r} "
            f"({'C=' + str(self.num_categories) if self.has_categories else 'missing: constant 0'}), "
            f"time slots from {self.SLOT_SEQ or 'nothing (missing: constant 0)'} "
            f"(S={self.num_time_slots} of {self.time_slot_seconds} s), {self.context_mode} context table"
            + (f" of {len(vocabulary)} tuples + UNK" if vocabulary is not None else "")
        )

    def _training_contexts(self, dataset):
        """(c_prev, c_cur, slot, valid) of every history position and every target of the training split."""
        inter = dataset.inter_feat
        item_seq = inter[self.ITEM_SEQ].long()
        seq_len = inter[self.ITEM_SEQ_LEN].long()
        target = inter[self.ITEM_ID].long()
        cats = self.item2cat[item_seq]
        last_cat = cats.gather(1, (seq_len - 1).clamp(min=0).unsqueeze(1))
        c_cur = torch.cat([cats, self.item2cat[target].unsqueeze(1)], dim=1)
        c_prev = torch.cat([shift_right(cats), last_cat], dim=1)
        if self.has_time_slots:
            slot = torch.cat([inter[self.SLOT_SEQ], inter[self.SLOT_FIELD].unsqueeze(1)], dim=1).long()
        else:
            slot = torch.zeros_like(c_cur)
        positions = torch.arange(item_seq.shape[1] + 1).unsqueeze(0)
        valid = (positions < seq_len.unsqueeze(1)) | (positions == item_seq.shape[1])
        return c_prev, c_cur, slot.clamp(0, self.num_time_slots - 1), valid

    def context_vectors(self, item_seq, slot_seq=None):
        """Context embeddings ``r`` of the positions of ``item_seq`` ``[B, T, D]``."""
        c_cur = self.item2cat[item_seq]
        c_prev = shift_right(c_cur)
        if slot_seq is None or not self.has_time_slots:
            slot = torch.zeros_like(item_seq)
        else:
            slot = slot_seq.long().clamp(0, self.num_time_slots - 1)
        return self.context_embedding(c_prev, c_cur, slot)

    # ------------------------------------------------------------------------------------------------------------
    # model
    # ------------------------------------------------------------------------------------------------------------

    def _init_weights(self, module):
        """N(0, initializer_range) for linear and embedding weights, zero biases, LayerNorm (1, 0), as SASRec;
        the depth-wise kernels keep torch's Conv1d initialisation."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def embed_items(self, item_seq, slot_seq=None, return_weights=False):
        """Item representations ``H`` of Eq.(8), ``[B, T, D]`` (before the embedding LayerNorm), and the
        composition weights ``[B, T, N]`` (None without context attention) when ``return_weights``."""
        if self.embedding_type == "compositional":
            base = self.item_embedding.base_vectors(item_seq)  # [B, T, N, D]
        else:
            base = self.item_embedding(item_seq).unsqueeze(-2)  # [B, T, 1, D]
        alpha = None
        if self.use_context:
            h, alpha = self.context_composition(base, self.context_vectors(item_seq, slot_seq))
        elif self.composition == "mult":
            h = elementwise_product(base)
        else:
            h = base.sum(-2) if self.composition != "mean" else base.mean(-2)
        return (h, alpha) if return_weights else h

    def forward(self, item_seq, item_seq_len, slot_seq=None):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        # valid positions: inside the sequence's length (whatever the padded cells hold) and not the padding id
        mask = (position_ids.unsqueeze(0) < item_seq_len.unsqueeze(1)) & (item_seq > 0)
        h = self.embed_items(item_seq, slot_seq)
        x = self.dropout(self.LayerNorm(h)) * mask.unsqueeze(-1).to(h.dtype)
        positions = self.position_embedding(position_ids).unsqueeze(0)
        attention_mask = self.get_attention_mask(
            item_seq * mask.to(item_seq.dtype), bidirectional=self.attn_mask == "bidirectional"
        )
        # the loss and the scores read the last valid position only: the last layer computes that row alone
        return self.encoder(x, positions, attention_mask, mask, index=item_seq_len - 1)  # [B, D]

    def _slots(self, interaction):
        return interaction[self.SLOT_SEQ] if self.SLOT_SEQ is not None else None

    def _sequence_output(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self._slots(interaction))

    def item_output_weight(self):
        """``W_p``, the output vector of every item ``[n_items, D]``: tied to the base tables (their composition, cached in
        eval mode), the full item table, or the separate output matrix."""
        if self.output_layer == "full":
            return self.output_projection.weight
        if self.embedding_type == "compositional":
            return self.item_embedding.all_vectors()
        return self.item_embedding.weight

    def _output_bias(self):
        if self.output_layer == "full":
            return self.output_projection.bias
        return self.output_bias_vector if self.output_bias else None

    def _scores(self, seq_output):
        scores = torch.matmul(seq_output, self.item_output_weight().transpose(0, 1))
        bias = self._output_bias()
        return scores + bias if bias is not None else scores

    def calculate_loss(self, interaction):
        seq_output = self._sequence_output(interaction)
        logits = self._scores(seq_output)
        logits[:, 0] = float("-inf")  # the padding id is never a next item
        return nn.functional.cross_entropy(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        seq_output = self._sequence_output(interaction)
        item = interaction[self.ITEM_ID]
        if self.output_layer == "full" or self.embedding_type == "full":
            item_emb = self.item_output_weight()[item]
        else:
            item_emb = self.item_embedding(item)
        scores = (seq_output * item_emb).sum(dim=-1)
        bias = self._output_bias()
        return scores + bias[item] if bias is not None else scores

    def full_sort_predict(self, interaction):
        return self._scores(self._sequence_output(interaction))  # [B, n_items]

    # ------------------------------------------------------------------------------------------------------------
    # reports
    # ------------------------------------------------------------------------------------------------------------

    def param_breakdown(self):
        """Parameters by part: ``item_embedding`` (the base tables, or the full table), ``context_embedding`` (the
        context table(s)), ``context_composition`` (Eq.(6)-(8): attention and MLP), ``position_embedding``,
        ``encoder`` (embedding LayerNorm and twin-attention layers) and ``output`` (bias, or the separate output
        matrix). The parts sum to the model's parameter count."""
        def count(module):
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        parts = {
            "item_embedding": count(self.item_embedding),
            "context_embedding": count(getattr(self, "context_embedding", None)),
            "context_composition": count(getattr(self, "context_composition", None)),
            "position_embedding": count(self.position_embedding),
            "encoder": count(self.LayerNorm) + count(self.encoder),
            "output": count(getattr(self, "output_projection", None))
            + (self.output_bias_vector.numel() if hasattr(self, "output_bias_vector") else 0),
        }
        return parts

    def benchmark_report(self):
        """Extra figures for the benchmark: the item tables against a full ``n_items x D`` table (SASRec's item
        table at the same hidden size), and the context table apart."""
        parts = self.param_breakdown()
        full_table = self.n_items * self.hidden_size
        report = {
            "item_table_params": parts["item_embedding"],
            "full_item_table_params": full_table,
            "item_table_ratio": parts["item_embedding"] / full_table,
            "context_table_params": parts["context_embedding"],
            "params_without_context_table": sum(parts.values()) - parts["context_embedding"],
        }
        if self.embedding_type == "compositional":
            report["base_table_sizes"] = list(self.item_embedding.table_sizes)
        if self.use_context:
            report["context_mode"] = self.context_mode
            report["categories"] = self.num_categories
            if self.context_mode == "joint":
                report["context_tuples"] = int(len(self.context_embedding.vocabulary))
            if hasattr(self, "slots_in_training"):
                report["time_slots_in_training"] = self.slots_in_training
        return report
