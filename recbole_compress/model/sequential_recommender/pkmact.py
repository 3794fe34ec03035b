r"""
PKMACT
################################################

Reference:
    "Compressing Long Range User Behavior Sequence with Interest Experts" (PKM-ACT; anonymous AAAI-style submission).
    Product keys: Guillaume Lample et al. "Large Memory Layers with Product Keys." in NeurIPS 2019.

PKM-ACT replaces SASRec's O(L^2) self-attention by blocks of

- a **product-key memory** (PKM): a hierarchical query network summarises the block's input sequence into one query
  per user, which retrieves the top-k "interest experts" of a memory of ``pkm_n_keys ** 2`` learned vectors;
- an **action transformer** (ACT) layer: the k experts are the slots of a dispatcher; the L tokens write into the
  slots (Eq. 6) and read them back (Eq. 7), O(L k) instead of O(L^2); then feed-forward layers on both streams.

The building blocks are :mod:`recbole_compress.model.layers.product_key_memory` and
:mod:`recbole_compress.model.layers.dispatcher`.

Where this implementation departs from the paper or fills its gaps (each choice is a config key, see PKMACT.yaml):

- Alg. 1 returns the retrieved values and ignores their scores, which leaves no gradient path to the keys and the
  query network. We weight each slot by ``k * softmax(score)`` (``pkm_weighting: softmax``; ``ste`` reproduces Alg. 1's
  forward pass with the softmax gradient, ``none`` is Alg. 1 literally).
- Unstated and settled as in our spec: residual + post-LayerNorm around both cross-attentions (RecBole convention),
  a separate FFN on the slots, multi-head attention with ``n_heads`` heads, Eq. 1 repeated until one vector is left
  (``query_stride`` 8), a query BatchNorm (Lample), one PKM per block reading that block's input, and the slots of a
  block added to the next block's retrieved experts (``dispatcher_carry: add``).
- "w/o Dispatcher" is not defined by the paper: ``act_mode: dispatch_only`` drops Eq. 6 (tokens read the retrieved
  experts directly); ``act_mode: self_attention`` is the O(L^2) reference (bidirectional self-attention, no PKM).
- Causality: the dispatcher and the query network see the whole input sequence, so the hidden state at position t
  depends on later positions. As in RecBole's SASRec, only the last valid position is scored, on RecBole's
  prefix-augmented samples: the prediction of the item after position t reads items up to t only, and padded
  positions (found from ``item_seq_len``) never change the output. An all-position next-item loss would leak the
  future and is deliberately absent.
- Product-key search with ``pkm_topk <= pkm_n_keys`` (as Lample's code requires; our issue makes a larger k a
  configuration error).
- Evaluation follows RecBole's full-ranking protocol; the paper's absolute figures are not comparable (see the doc).
"""
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward, MultiHeadAttention
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_compress.model.layers.fast_dropout import FastDropout, use_fast_dropout
from recbole_compress.model.layers.dispatcher import DispatcherAttention
from recbole_compress.model.layers.product_key_memory import (
    WEIGHTINGS,
    HierarchicalQueryNetwork,
    MaskedMeanQuery,
    ProductKeyMemory,
)
from recbole_compress.model.layers.twin_attention import rows_at
from recbole_compress.config_keys import Key, Relation

PKM_MODES = ("pkm", "learned")
QUERY_NETS = ("hierarchical", "mean")
ACT_MODES = ("dispatcher", "dispatch_only", "self_attention")
CARRIES = ("add", "none")
LOSS_TYPES = ("CE", "BPR")
HIDDEN_ACTS = ("gelu", "relu", "swish", "tanh", "sigmoid")


def _dropout(name):
    return Key(name, float, low=0, high=1, high_open=True)


#: Every key PKM-ACT reads, with its rule.
PKMACT_KEYS = (
    Key("n_layers", int, low=1),
    Key("n_heads", int, low=1),
    Key("hidden_size", int, low=1),
    Key("inner_size", int, low=1),
    _dropout("hidden_dropout_prob"),
    _dropout("attn_dropout_prob"),
    Key("hidden_act", str, choices=HIDDEN_ACTS),
    Key("layer_norm_eps", float, low=0, low_open=True),
    Key("initializer_range", float, low=0),
    Key("loss_type", str, choices=LOSS_TYPES),
    Key("pkm_mode", str, choices=PKM_MODES),
    Key("pkm_n_keys", int, low=1),
    Key("pkm_topk", int, low=1),
    Key("pkm_heads", int, low=1),
    Key("pkm_key_dim", int, low=2, none_ok=True),
    Key("pkm_query_batchnorm", bool),
    Key("pkm_weighting", str, choices=WEIGHTINGS),
    _dropout("pkm_input_dropout"),
    _dropout("pkm_query_dropout"),
    _dropout("pkm_value_dropout"),
    Key("query_net", str, choices=QUERY_NETS),
    Key("query_stride", int, low=2),
    Key("query_levels", int, low=0),
    Key("act_mode", str, choices=ACT_MODES),
    Key("dispatcher_carry", str, choices=CARRIES),
)

PKMACT_RELATIONS = (
    Relation(("hidden_size", "n_heads"), lambda c: c["hidden_size"] % c["n_heads"] == 0,
             "hidden_size must be divisible by n_heads (allowed n_heads: the divisors of hidden_size)"),
    Relation(("pkm_topk", "pkm_n_keys"), lambda c: c["pkm_topk"] <= c["pkm_n_keys"],
             "pkm_topk must not be larger than pkm_n_keys, the number of sub-keys per half"),
    Relation(("pkm_key_dim",), lambda c: c["pkm_key_dim"] % 2 == 0, "pkm_key_dim must be even (two half keys)",
             when=lambda c: c["pkm_key_dim"] is not None),
    Relation(("pkm_key_dim", "hidden_size"), lambda c: c["hidden_size"] % 2 == 0,
             "pkm_key_dim defaults to hidden_size, which is odd: set an even pkm_key_dim",
             when=lambda c: c["pkm_key_dim"] is None),
)


class PKMACTBlock(nn.Module):
    r"""One PKM + ACT block: retrieve the slots, dispatch, feed-forward on both streams.

    ``forward(x, mask, carry)`` returns ``(x', carry', aux)``: ``carry'`` is the slot stream passed to the next block
    (None when ``carry_out`` is False), ``aux`` the retrieval's indices and scores ``[B, heads, k]`` (PKM mode).
    With ``index`` (``[B]`` positions) ``x'`` is ``[B, 1, d]``, the full output's rows at those positions: the
    memory and the slots still read every token, the tokens' read-back and feed-forward run at one row.
    """

    def __init__(self, config, max_seq_length, carry_out):
        super().__init__()
        d = config["hidden_size"]
        self.act_mode = config["act_mode"]
        self.pkm_mode = config["pkm_mode"]
        common = (config["n_heads"], d, config["hidden_dropout_prob"], config["attn_dropout_prob"],
                  config["layer_norm_eps"])
        ffn_args = (d, config["inner_size"], config["hidden_dropout_prob"], config["hidden_act"],
                    config["layer_norm_eps"])
        self.pkm = self.learned_slots = self.dispatcher = self.self_attention = self.ffn_p = None
        if self.act_mode == "self_attention":
            self.self_attention = MultiHeadAttention(*common)
        else:
            n_slots = config["pkm_heads"] * config["pkm_topk"]
            if self.pkm_mode == "pkm":
                if config["query_net"] == "hierarchical":
                    query_network = HierarchicalQueryNetwork(
                        d,
                        max_seq_length,
                        stride=config["query_stride"],
                        n_levels=config["query_levels"],
                        n_heads=config["n_heads"],
                        hidden_dropout_prob=config["hidden_dropout_prob"],
                        attn_dropout_prob=config["attn_dropout_prob"],
                        layer_norm_eps=config["layer_norm_eps"],
                    )
                else:
                    query_network = MaskedMeanQuery()
                self.pkm = ProductKeyMemory(
                    input_size=d,
                    value_size=d,
                    n_keys=config["pkm_n_keys"],
                    topk=config["pkm_topk"],
                    heads=config["pkm_heads"],
                    key_size=config["pkm_key_dim"],
                    query_batchnorm=config["pkm_query_batchnorm"],
                    weighting=config["pkm_weighting"],
                    input_dropout=config["pkm_input_dropout"],
                    query_dropout=config["pkm_query_dropout"],
                    value_dropout=config["pkm_value_dropout"],
                    query_network=query_network,
                )
            else:  # "w/o PKM": the same learnable experts for every user
                self.learned_slots = nn.Parameter(torch.empty(n_slots, d))
            self.dispatcher = DispatcherAttention(*common, aggregate=self.act_mode == "dispatcher")
            if carry_out:
                self.ffn_p = FeedForward(*ffn_args)
        self.ffn_x = FeedForward(*ffn_args)
        use_fast_dropout(self)  # RecBole's attention and feed-forward draw torch's slower CPU dropout masks
        self.reset_memory_parameters()

    def reset_memory_parameters(self):
        """Memory initialisation (XLM / Luna), re-applied after the host model's ``apply(_init_weights)``."""
        if self.pkm is not None:
            self.pkm.reset_parameters()
        if self.learned_slots is not None:
            nn.init.normal_(self.learned_slots, mean=0.0, std=self.learned_slots.size(1) ** -0.5)

    def forward(self, x, mask, carry=None, index=None):
        aux = {}
        if self.self_attention is not None:  # the O(L^2) reference: every row, then the asked ones
            additive = torch.zeros(x.size(0), 1, 1, x.size(1), dtype=x.dtype, device=x.device)
            additive = additive.masked_fill(~mask[:, None, None, :], torch.finfo(x.dtype).min)
            x = self.ffn_x(self.self_attention(x, additive))
            if index is not None:
                x = rows_at(x, index).unsqueeze(1)
            return x, None, aux
        if self.pkm is not None:
            out = self.pkm(x, mask)
            slots = out.slots
            aux = {"indices": out.indices, "scores": out.scores}
        else:
            slots = self.learned_slots.unsqueeze(0).expand(x.size(0), -1, -1)
        if carry is not None:
            slots = slots + carry
        x, slots = self.dispatcher(x, slots, mask, index=index)
        x = self.ffn_x(x)
        carry = self.ffn_p(slots) if self.ffn_p is not None else None
        return x, carry, aux


class PKMACT(SequentialRecommender):
    r"""PKM-ACT: product-key memory of interest experts plus a dispatcher, linear in the sequence length.

    Embedding layer, item table tied with the output layer, last-position scoring and losses are SASRec's.
    """

    aliases = ("PKM-ACT",)
    counterpart = "SASRec"
    config_keys = PKMACT_KEYS
    config_relations = PKMACT_RELATIONS

    def __init__(self, config, dataset):
        super(PKMACT, self).__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.hidden_size = config["hidden_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]
        self.act_mode = config["act_mode"]
        self.carry = config["dispatcher_carry"] == "add" and self.act_mode != "self_attention"

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = FastDropout(self.hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            PKMACTBlock(config, self.max_seq_length, carry_out=self.carry and i < self.n_layers - 1)
            for i in range(self.n_layers)
        )
        self.loss_fct = BPRLoss() if self.loss_type == "BPR" else nn.CrossEntropyLoss()

        # parameters initialization
        self.apply(self._init_weights)
        for block in self.blocks:
            block.reset_memory_parameters()

    def _init_weights(self, module):
        """Initialize the weights (SASRec's)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def train(self, mode=True):
        if not mode:  # each evaluation pass counts its own expert usage
            self.reset_expert_stats()
        return super().train(mode)

    def encode(self, item_seq, item_seq_len, return_aux=False, index=None):
        """Hidden states of every position ``[B, L, d]`` (and the per-block retrieval aux if ``return_aux``).

        Position ``t < item_seq_len - 1`` sees the whole valid prefix (the model is bidirectional inside it);
        positions ``>= item_seq_len`` are padding, never read, and hold unspecified values. With ``index`` (``[B]``)
        the last block computes only those rows: ``[B, 1, d]``, equal to the full pass's rows there.
        """
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        input_emb = self.item_embedding(item_seq) + self.position_embedding(position_ids).unsqueeze(0)
        x = self.dropout(self.LayerNorm(input_emb))
        mask = position_ids.unsqueeze(0) < item_seq_len.unsqueeze(1)  # [B, L]; from the length, not from ids
        carry, aux = None, []
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, carry, block_aux = block(x, mask, carry, index=index if last else None)
            aux.append(block_aux)
        return (x, aux) if return_aux else x

    def forward(self, item_seq, item_seq_len):
        # the last position is the only one scored: the last block reads the slots back there only
        return self.encode(item_seq, item_seq_len, index=item_seq_len - 1).squeeze(1)  # [B H]

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = torch.sum(seq_output * self.item_embedding(pos_items), dim=-1)  # [B]
            neg_score = torch.sum(seq_output * self.item_embedding(neg_items), dim=-1)  # [B]
            return self.loss_fct(pos_score, neg_score)
        logits = torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))
        return self.loss_fct(logits, pos_items)

    def predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        test_item = interaction[self.ITEM_ID]
        seq_output = self.forward(item_seq, item_seq_len)
        return torch.mul(seq_output, self.item_embedding(test_item)).sum(dim=1)  # [B]

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        return torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))  # [B n_items]

    # ------------------------------------------------------------------------------------------------------------
    # diagnostics and benchmark hooks
    # ------------------------------------------------------------------------------------------------------------

    def reset_expert_stats(self):
        for block in getattr(self, "blocks", []):
            if block.pkm is not None:
                block.pkm.reset_usage()

    def expert_stats(self):
        """Per block: the selection count of each expert and the key usage (fraction of experts selected at least
        once) over the evaluation pass since the last switch to eval mode; None for blocks without a memory."""
        stats = []
        for block in self.blocks:
            pkm = block.pkm
            if pkm is None or pkm.usage_counts is None:
                stats.append(None)
            else:
                stats.append({"counts": pkm.usage_counts.clone(), "key_usage": pkm.key_usage()})
        return stats

    def param_breakdown(self):
        """Parameters by component (the benchmark records it)."""
        groups = {"item_embedding": 0, "position_embedding": 0, "query_network": 0, "pkm_query_and_keys": 0,
                  "pkm_values": 0, "learned_slots": 0, "dispatcher": 0, "self_attention": 0, "ffn_tokens": 0,
                  "ffn_slots": 0, "other": 0}
        for name, p in self.named_parameters():
            n = p.numel()
            if name.startswith("item_embedding"):
                groups["item_embedding"] += n
            elif name.startswith("position_embedding"):
                groups["position_embedding"] += n
            elif ".pkm.query_network." in name:
                groups["query_network"] += n
            elif name.endswith(".pkm.values"):
                groups["pkm_values"] += n
            elif ".pkm." in name:
                groups["pkm_query_and_keys"] += n
            elif name.endswith(".learned_slots"):
                groups["learned_slots"] += n
            elif ".dispatcher." in name:
                groups["dispatcher"] += n
            elif ".self_attention." in name:
                groups["self_attention"] += n
            elif ".ffn_x." in name:
                groups["ffn_tokens"] += n
            elif ".ffn_p." in name:
                groups["ffn_slots"] += n
            else:
                groups["other"] += n
        return {k: v for k, v in groups.items() if v}

    def benchmark_report(self):
        """Memory size, slots and key usage of the last evaluation pass (the test set, in the benchmark)."""
        report = {"act_mode": self.act_mode}
        for i, block in enumerate(self.blocks):
            if block.pkm is not None:
                report["memory_size"] = block.pkm.memory_size
                report["slots"] = block.pkm.n_slots
                usage = block.pkm.key_usage()
                if usage is not None:
                    report[f"key_usage_block{i}"] = round(usage, 4)
            elif block.learned_slots is not None:
                report["slots"] = block.learned_slots.size(0)
        return report
