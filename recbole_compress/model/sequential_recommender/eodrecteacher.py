r"""
EODRecTeacher
################################################

Reference:
    Xia Xin, Junliang Yu, Qinyong Wang, Chaoqun Yang, Nguyen Quoc Viet Hung, Hongzhi Yin.
    "Efficient On-Device Session-Based Recommendation." ACM TOIS 41(4), 2023. §3.2.1, Eq. 2-3.

The uncompressed teacher of :class:`~recbole_compress.model.sequential_recommender.eodrec.EODRec`: SASRec whose
session representation is a soft attention over all valid positions (Eq. 3) instead of the last position, with a full
item table scored by inner product and trained with softmax cross-entropy. The paper credits the readout for the
teacher beating plain SASRec (Table 3). EODRec's student uses the same backbone (:class:`SoftAttentionTransformer`)
with its own parameters and a compositional item table.

Departures from the paper, and why:
    - The readout applies ``tanh`` to the hidden states before ``W_a`` (as the authors' code does; the paper's Eq. 3
      omits it) and averages over valid positions only (the authors' code also averages padded positions, a bug).
    - The position table has ``MAX_ITEM_LIST_LENGTH`` rows (RecBole keeps the most recent items of a longer
      session); the authors' code uses 300 rows.
    - ``init_method: recbole`` offers RecBole's usual normal(0, 0.02) initialisation beside the paper's
      U(-0.1, 0.1) on every parameter (the default).
"""
import torch
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder

from recbole_compress.model.layers.fast_dropout import FastDropout, use_fast_dropout
from recbole_compress.model.layers.soft_attention_readout import SoftAttentionReadout
from recbole_compress.config_keys import Key, Relation

INIT_METHODS = ("uniform", "recbole")
HIDDEN_ACTS = ("gelu", "relu", "swish", "tanh", "sigmoid")  # RecBole's TransformerEncoder

#: The keys of the backbone and its initialisation (shared by the teacher and the student).
BACKBONE_KEYS = (
    Key("hidden_size", int, low=1),
    Key("inner_size", int, low=1),
    Key("n_layers", int, low=1),
    Key("n_heads", int, low=1),
    Key("hidden_dropout_prob", float, low=0, high=1, high_open=True),
    Key("attn_dropout_prob", float, low=0, high=1, high_open=True),
    Key("hidden_act", str, choices=HIDDEN_ACTS),
    Key("layer_norm_eps", float, low=0, low_open=True),
    Key("init_method", str, choices=INIT_METHODS),
    Key("init_range", float, low=0),
    Key("loss_type", str, choices=("CE",)),
)
BACKBONE_RELATIONS = (
    Relation(("hidden_size", "n_heads"), lambda c: c["hidden_size"] % c["n_heads"] == 0,
             "hidden_size must be a multiple of n_heads"),
)


def init_backbone_weights(module, method, init_range, std=0.02):
    """The paper's U(-r, r) on every parameter (LayerNorm included), or RecBole's normal(0, std) init."""
    if method == "uniform":
        for p in module.parameters():
            nn.init.uniform_(p, -init_range, init_range)
        return

    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(m, nn.LayerNorm):
            m.bias.data.zero_()
            m.weight.data.fill_(1.0)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()

    module.apply(_init)


class SoftAttentionTransformer(nn.Module):
    """The shared backbone: positions + LayerNorm + dropout, RecBole's causal TransformerEncoder, soft-attention
    readout. ``forward(item_emb B x L x N, item_seq B x L) -> B x N``."""

    def __init__(self, config, max_seq_length):
        super().__init__()
        hidden = config["hidden_size"]
        self.position_embedding = nn.Embedding(max_seq_length, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = FastDropout(config["hidden_dropout_prob"])
        self.trm_encoder = TransformerEncoder(  # its dropouts become FastDropout below
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=hidden,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        use_fast_dropout(self.trm_encoder)
        self.readout = SoftAttentionReadout(hidden)

    @staticmethod
    def attention_mask(item_seq):
        """Causal x key-padding additive mask, as ``SequentialRecommender.get_attention_mask``."""
        valid = (item_seq != 0).unsqueeze(1).unsqueeze(2)
        mask = torch.tril(valid.expand((-1, -1, item_seq.size(-1), -1)))
        return torch.where(mask, 0.0, -10000.0)

    def forward(self, item_emb, item_seq):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        x = item_emb + self.position_embedding(position_ids).unsqueeze(0)
        x = self.dropout(self.LayerNorm(x))
        hidden = self.trm_encoder(x, self.attention_mask(item_seq), output_all_encoded_layers=False)[-1]
        return self.readout(hidden, item_seq != 0)


class EODRecTeacher(SequentialRecommender):
    r"""SASRec with a soft-attention session readout and a full item table: EODRec's teacher (paper §3.2.1).

    ``forward(item_seq, item_seq_len) -> B x N`` session representations; scores are their inner products with
    ``item_embedding.weight``.
    """

    config_keys = BACKBONE_KEYS
    config_relations = BACKBONE_RELATIONS

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.loss_type = config["loss_type"]
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.backbone = SoftAttentionTransformer(config, self.max_seq_length)
        self.loss_fct = nn.CrossEntropyLoss()
        init_backbone_weights(self, config["init_method"], config["init_range"])
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, item_seq, item_seq_len):
        return self.backbone(self.item_embedding(item_seq), item_seq)

    def calculate_loss(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = seq_output @ self.item_embedding.weight.t()
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight.t()
