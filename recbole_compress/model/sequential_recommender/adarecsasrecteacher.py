r"""
AdaRecSASRecTeacher
################################################

Reference:
    Lei Chen, Fajie Yuan, Jiaxi Yang, Chengming Li, Min Yang. "Scene-adaptive Knowledge Distillation for Sequential
    Recommendation via Differentiable Architecture Search", WANT@NeurIPS 2023 (§3.1, App. A.2, Eqs. 21-22); the
    block is SASRec's (Kang and McAuley, ICDM 2018).

The SASRec-style teacher of AdaRec, exposing the sequence embedding, the output of every block and the next-item
logits (:meth:`forward_distill`). Block, as the authors' code builds it (Eq. 22 lists SA and FFN in the wrong order)::

    y = LN1(x);  a = MHA(y) + y;  b = LN2(a);  f = FFN(b) + b;  out = x + lambda * f

with causal multi-head attention whose heads use Q/K/V projections and no output projection, a position-wise
feed-forward ``Linear -> ReLU -> Dropout -> Linear -> Dropout`` of width ``hidden_size``, and a learnable ``lambda``
initialised to 0 (Eq. 21's coefficient; ``use_rezero: False`` fixes it to 1). A final LayerNorm and an untied output
layer with bias give the logits.

Departures from the paper, and why:

- Trained on RecBole's prefix-augmented sequences with cross-entropy at the last valid position, right-padded with
  id 0 (the causal mask keeps the padding out of every valid position).
- The authors train it with LAMB, which torch does not ship; the default learner is AdamW (lr 1e-3, weight decay 0.01).
"""
import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.config_keys import Key, Relation


class CausalSelfAttentionBlock(nn.Module):
    """AdaRec's SASRec block (pre-LN, Q/K/V projections only, causal attention, ReZero residual)."""

    def __init__(self, hidden_size, n_heads, dropout_prob, rezero=True, layer_norm_eps=1e-8):
        super().__init__()
        self.n_heads = n_heads
        self.dropout_prob = dropout_prob
        self.ln1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.ln2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            FastDropout(dropout_prob),
            nn.Linear(hidden_size, hidden_size),
            FastDropout(dropout_prob),
        )
        if rezero:
            self.rezero = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("rezero", torch.ones(1))

    def _heads(self, x):
        b, length, d = x.shape
        return x.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x):
        y = self.ln1(x)
        attended = F.scaled_dot_product_attention(
            self._heads(self.query(y)), self._heads(self.key(y)), self._heads(self.value(y)),
            dropout_p=self.dropout_prob if self.training else 0.0, is_causal=True,
        )
        a = attended.transpose(1, 2).reshape_as(y) + y
        b = self.ln2(a)
        f = self.ffn(b) + b
        return x + self.rezero * f


class AdaRecSASRecTeacher(SequentialRecommender):
    r"""SASRec teacher of AdaRec: causal self-attention blocks, untied output layer, every block a distillation tap."""

    config_keys = (
        Key("hidden_size", int, low=1),
        Key("n_layers", int, low=1),
        Key("n_heads", int, low=1),
        Key("dropout_prob", float, low=0, high=1, high_open=True),
        Key("use_rezero", bool),
        Key("layer_norm_eps", float, low=0, low_open=True),
        Key("loss_type", str, choices=("CE",)),
    )
    config_relations = (
        Relation(("hidden_size", "n_heads"), lambda c: c["hidden_size"] % c["n_heads"] == 0,
                 "hidden_size must be a multiple of n_heads"),
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.emb_dropout = FastDropout(config["dropout_prob"])
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(self.hidden_size, self.n_heads, config["dropout_prob"], config["use_rezero"],
                                     config["layer_norm_eps"])
            for _ in range(self.n_layers)
        )
        self.final_norm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.output = nn.Linear(self.hidden_size, self.n_items)
        self.loss_fct = nn.CrossEntropyLoss()

    @property
    def distill_width(self):
        return self.hidden_size

    @property
    def num_distill_layers(self):
        return self.n_layers

    def _encode(self, item_seq):
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        h, taps = self.emb_dropout(emb), []
        for block in self.blocks:
            h = block(h)
            taps.append(h)
        return emb, taps, self.final_norm(h)

    def forward(self, item_seq, item_seq_len):
        _, _, h = self._encode(item_seq)
        return self.gather_indexes(h, item_seq_len - 1)

    def forward_distill(self, item_seq, item_seq_len):
        """``(embedding [B, L, d], block outputs: N x [B, L, d], logits at the last valid position [B, n_items])``."""
        emb, taps, h = self._encode(item_seq)
        return emb, taps, self.output(self.gather_indexes(h, item_seq_len - 1))

    def calculate_loss(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.loss_fct(self.output(h), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        item = interaction[self.ITEM_ID]
        return (h * self.output.weight[item]).sum(-1) + self.output.bias[item]

    def full_sort_predict(self, interaction):
        return self.output(self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]))
