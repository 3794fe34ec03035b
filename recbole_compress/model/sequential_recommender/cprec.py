r"""
CpRec
################################################

Reference:
    Yang Sun, Fajie Yuan, Min Yang, Guoao Wei, Zhou Zhao, Duo Liu. "A Generic Network Compression Framework for
    Sequential Recommender Systems." In SIGIR 2020 (arXiv 2004.13139). Instantiated on NextItNet (Yuan et al.,
    "A Simple Convolutional Generative Network for Next Item Recommendation", WSDM 2019).

Reference code (read only): https://github.com/siat-nlp/CpRec and https://github.com/fajieyuan/nextitnet.
"""
import torch
from torch import nn
from torch.nn import functional as F

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.model.layers.adaptive_embedding import AdaptiveEmbedding, adaptive_embedding_parameters
from recbole_compress.model.layers.adaptive_softmax import AdaptiveSoftmax, adaptive_softmax_parameters
from recbole_compress.config_keys import Key
from recbole_compress.model.layers.frequency_blocks import BLOCK_KEYS, BLOCKS_RULE, blocks_from_config
from recbole_compress.model.layers.nextitnet_blocks import SHARING_SCHEMES, NextItNetResidualStack, middle_parameters

LOSS_POSITIONS = ("last", "all")


class CpRec(SequentialRecommender):
    r"""CpRec: NextItNet compressed by block-wise adaptive decomposition of its input and output item matrices and by
    layer-wise parameter sharing of its residual blocks.

    * Items are ranked by their frequency among the training targets and cut into ``n`` blocks (``n_clusters`` with
      the paper's recursive 2:8 rule ``cluster_split_ratio``, or explicit ``cluster_cutoffs``: absolute ranks or
      fractions of the catalogue). Block j has width ``d_j`` (``d // cluster_dim_factor**(j-1)`` or ``cluster_dims``).
    * Input (``adaptive_input``): :class:`~recbole_compress.model.layers.adaptive_embedding.AdaptiveEmbedding`.
    * Middle: NextItNet residual blocks with dilations ``dilations * block_num`` and ``sharing_scheme`` one of
      ``none``, ``cross_layer`` (CpRec-Cl), ``cross_block`` (Cb), ``adjacent_layer`` (Al), ``adjacent_block`` (Ab)
      (:class:`~recbole_compress.model.layers.nextitnet_blocks.NextItNetResidualStack`).
    * Output (``adaptive_output``): the two-level tree softmax
      (:class:`~recbole_compress.model.layers.adaptive_softmax.AdaptiveSoftmax`), trained with its own exact CE;
      ``full_sort_predict`` returns the log-probability of every item in catalogue order.
    * The sequence is represented by the hidden state at its last real item (``item_seq_len - 1``).

    ``adaptive_input: False``, ``adaptive_output: False``, ``sharing_scheme: none`` is the paper's uncompressed
    NextItNet, the baseline of its Tables 2-4: a full input table, an untied full softmax with bias (scores are its
    logits) and no sharing. The benchmark plans label that configuration ``NextItNet-uncompressed``; the command line
    reports CpRec's size beside RecBole's NextItNet (:attr:`counterpart`). The paper's variants: CpRec-Cl/Cb/Al/Ab (Table 2) = both adaptive switches on with the
    scheme; Bi/Bo/Bio-NextItNet (Table 3) = one or both switches with ``none``; B1 = ``n_clusters: 1,
    cluster_dims: [d/4]``; Cl/Cb/Al/Ab-NextItNet (Table 4) = the scheme with both switches off.

    Departures from the paper, and why:

    * Training rows are RecBole's augmented prefixes with the loss at the last position (``loss_position: last``);
      the paper trains every position of a sequence (``loss_position: all`` does that, pads masked), which RecBole's
      augmentation already covers across rows.
    * The ranking counts the training split's targets only (the official code ranks over the whole file, test
      included, and ranks its padding token as an item); the padding id is in no block, has a zero input vector and
      is never a target.
    * Block widths follow the same geometric progression on both sides (the official code squares the factor on
      the output side for n >= 4); explicit ``cluster_dims`` may set any widths.
    * Default cut-offs follow the paper's 2:8 rule; the official code hard-codes absolute ranks [7000, 15000]
      (reachable with ``cluster_cutoffs``).
    * No L2 term by default (``reg_weight: 0``, the paper's setting); the official code adds ``1e-3`` times a mean
      of L2 norms.
    * The paper's early-stop top-N search (exact only at batch size 1 in the code) is not used: RecBole's evaluator
      needs every item's score.
    """

    aliases = ("CpRec-NextItNet",)
    counterpart = "NextItNet"
    config_keys = (
        Key("embedding_size", int, low=1),
        Key("kernel_size", int, low=1),
        Key("block_num", int, low=1),
        Key("dilations", list, items=int, low=1, nonempty=True),
        Key("reg_weight", float, low=0),
        Key("loss_type", str, choices=("CE",)),
        Key("adaptive_input", bool),
        Key("adaptive_output", bool),
        Key("sharing_scheme", str, choices=SHARING_SCHEMES),
        Key("loss_position", str, choices=LOSS_POSITIONS),
        Key("dropout_prob", float, low=0, high=1, high_open=True),
    ) + BLOCK_KEYS
    data_rules = (BLOCKS_RULE,)

    def __init__(self, config, dataset):
        super(CpRec, self).__init__(config, dataset)

        self.embedding_size = config["embedding_size"]
        self.kernel_size = config["kernel_size"]
        self.block_num = config["block_num"]
        self.dilations = config["dilations"]
        self.reg_weight = config["reg_weight"]
        self.loss_type = config["loss_type"]
        self.adaptive_input = config["adaptive_input"]
        self.adaptive_output = config["adaptive_output"]
        self.sharing_scheme = config["sharing_scheme"]
        self.loss_position = config["loss_position"]
        self.dropout_prob = config["dropout_prob"]

        d = self.embedding_size
        self.blocks, self.cluster_dims = None, None
        if self.adaptive_input or self.adaptive_output:
            # the frequency ranking of the training split (RecBole builds models with train_data._dataset)
            self.blocks, self.cluster_dims = blocks_from_config(config, dataset, d)

        # input layer
        if self.adaptive_input:
            self.item_embedding = AdaptiveEmbedding(self.blocks, d, self.cluster_dims)
        else:
            self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
            bound = (1.0 / self.n_items) ** 0.5
            nn.init.uniform_(self.item_embedding.weight, -bound, bound)
            with torch.no_grad():
                self.item_embedding.weight[0].zero_()

        # middle layers
        self.residual_blocks = NextItNetResidualStack(
            d, self.kernel_size, list(self.dilations) * self.block_num, self.sharing_scheme, layer_norm_eps=1e-8
        )

        # output layer
        if self.adaptive_output:
            self.output_layer = AdaptiveSoftmax(self.blocks, d, self.cluster_dims, dropout=self.dropout_prob)
            self.output_dropout = None
        else:
            self.output_layer = nn.Linear(d, self.n_items, bias=True)
            nn.init.normal_(self.output_layer.weight, std=0.01)
            nn.init.constant_(self.output_layer.bias, 0.1)
            self.output_dropout = FastDropout(self.dropout_prob)

    # ------------------------------------------------------------------------------------------------------------
    def encode(self, item_seq):
        """Hidden states of every position, ``[B, L, d]`` (causal: position t sees items up to t)."""
        return self.residual_blocks(self.item_embedding(item_seq))

    @staticmethod
    def _trim(item_seq, item_seq_len):
        """Drop the trailing columns that are padding in every row: RecBole pads on the right and the convolutions
        are causal, so no real position depends on them (same outputs, less work on short sequences)."""
        length = max(1, int(item_seq_len.max()))
        return item_seq[:, :length] if length < item_seq.shape[1] else item_seq

    def forward(self, item_seq, item_seq_len):
        """The sequence representation, the hidden state at the last real item: ``[B, d]``."""
        return self.gather_indexes(self.encode(self._trim(item_seq, item_seq_len)), item_seq_len - 1)

    def _full_logits(self, h):
        return self.output_layer(self.output_dropout(h))

    def _nll(self, h, targets):
        if self.adaptive_output:
            return self.output_layer(h, targets)
        # the padding id is never a target: the softmax runs over the real items only
        logits = F.linear(self.output_dropout(h), self.output_layer.weight[1:], self.output_layer.bias[1:])
        return F.cross_entropy(logits, targets - 1)

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_position == "last":
            loss = self._nll(self.forward(item_seq, item_seq_len), pos_items)
        else:  # every real position predicts its next item (NextItNet's seq2seq training), pads masked out
            item_seq = self._trim(item_seq, item_seq_len)
            hidden = self.encode(item_seq)
            targets = torch.cat([item_seq[:, 1:], item_seq.new_zeros(item_seq.shape[0], 1)], dim=1)
            targets = targets.scatter(1, (item_seq_len - 1).unsqueeze(1), pos_items.unsqueeze(1))
            mask = torch.arange(item_seq.shape[1], device=item_seq.device).unsqueeze(0) < item_seq_len.unsqueeze(1)
            loss = self._nll(hidden[mask], targets[mask])
        if self.reg_weight > 0:
            reg = sum(p.pow(2).sum() for p in self.parameters()) / 2
            return loss, self.reg_weight * reg
        return loss

    def predict(self, interaction):
        """Score of ``interaction[ITEM_ID]`` for every row, ``[B]``: the item's tree log-probability (adaptive
        output) or its logit (full softmax), equal to the item's column of :meth:`full_sort_predict`."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        test_item = interaction[self.ITEM_ID]
        h = self.forward(item_seq, item_seq_len)
        if self.adaptive_output:
            return self.output_layer.target_log_prob(h, test_item)
        return (h * self.output_layer.weight[test_item]).sum(dim=-1) + self.output_layer.bias[test_item]

    def full_sort_predict(self, interaction):
        """Scores of every item, ``[B, n_items]`` (column 0, the padding id, is -inf): tree log-probabilities in
        catalogue order, or the full softmax's logits."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        h = self.forward(item_seq, item_seq_len)
        if self.adaptive_output:
            return self.output_layer.full_log_prob(h)
        scores = self._full_logits(h)
        scores[:, 0] = float("-inf")
        return scores

    # ------------------------------------------------------------------------------------------------------------
    def param_breakdown(self):
        """Unique parameters of the input layer, the middle layers and the output layer (benchmark hook)."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {
            "input": count(self.item_embedding),
            "middle": count(self.residual_blocks),
            "output": count(self.output_layer),
        }
        parts["total"] = sum(p.numel() for p in self.parameters())
        return parts

    def uncompressed_parameters(self):
        """Closed-form parameter counts of the uncompressed NextItNet of the same width and depth on the same
        catalogue (full input table, full softmax with bias, no sharing)."""
        d, n = self.embedding_size, self.n_items
        parts = {
            "input": n * d,
            "middle": middle_parameters("none", self.residual_blocks.n_blocks, d, self.kernel_size),
            "output": d * n + n,
        }
        parts["total"] = sum(parts.values())
        return parts

    def expected_parameters(self):
        """Closed-form parameter counts of this configuration (the formulas of the paper, §3.1-3.2)."""
        d, n = self.embedding_size, self.n_items
        sizes = self.blocks.sizes if self.blocks is not None else None
        parts = {
            "input": adaptive_embedding_parameters(sizes, d, self.cluster_dims) if self.adaptive_input else n * d,
            "middle": middle_parameters(self.sharing_scheme, self.residual_blocks.n_blocks, d, self.kernel_size),
            "output": adaptive_softmax_parameters(sizes, d, self.cluster_dims) if self.adaptive_output else d * n + n,
        }
        parts["total"] = sum(parts.values())
        return parts

    def benchmark_report(self):
        """Extra figures for the benchmark: the partition and the compression of each part."""
        mine, full = self.param_breakdown(), self.uncompressed_parameters()
        report = {
            "sharing_scheme": self.sharing_scheme,
            "conv_sets": len(self.residual_blocks.convs),
            "adaptive_input": self.adaptive_input,
            "adaptive_output": self.adaptive_output,
        }
        if self.blocks is not None:
            report["cluster_sizes"] = self.blocks.sizes
            report["cluster_cutoffs"] = self.blocks.cutoffs
            report["cluster_dims"] = self.cluster_dims
        for part in ("input", "middle", "output", "total"):
            report[f"{part}_ratio_vs_uncompressed"] = round(mine[part] / full[part], 4)
        return report
