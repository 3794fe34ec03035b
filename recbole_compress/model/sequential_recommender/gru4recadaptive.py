r"""
GRU4RecAdaptive
################################################

Reference:
    Yang Sun, Fajie Yuan, Min Yang, Guoao Wei, Zhou Zhao, Duo Liu. "A Generic Network Compression Framework for
    Sequential Recommender Systems." In SIGIR 2020, §5.3 and Table 5 (Bi-/Bo-/Bio-GRU4Rec).
    Balázs Hidasi et al. "Session-based Recommendations with Recurrent Neural Networks." In ICLR 2016.
"""
import torch
from torch import nn
from torch.nn.init import xavier_normal_, xavier_uniform_

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.model.layers.adaptive_embedding import AdaptiveEmbedding
from recbole_compress.model.layers.adaptive_softmax import AdaptiveSoftmax
from recbole_compress.config_keys import Key
from recbole_compress.model.layers.frequency_blocks import BLOCK_KEYS, BLOCKS_RULE, blocks_from_config


class GRU4RecAdaptive(SequentialRecommender):
    r"""RecBole's GRU4Rec with CpRec's block-wise adaptive input embedding and adaptive (tree) softmax: the paper's
    adaptability experiment (Table 5), showing that the two layers work under another backbone.

    The backbone is RecBole's GRU4Rec unchanged (embedding dropout, a GRU without bias, a dense layer back to
    ``embedding_size``, the hidden state at the last real item). Only the item matrices change:

    * ``adaptive_input``: the input table becomes an
      :class:`~recbole_compress.model.layers.adaptive_embedding.AdaptiveEmbedding` over frequency-ranked blocks of
      the training targets (Bi-GRU4Rec);
    * ``adaptive_output``: the scores become the log-probabilities of an
      :class:`~recbole_compress.model.layers.adaptive_softmax.AdaptiveSoftmax` trained with its exact tree CE
      (Bo-GRU4Rec); both give Bio-GRU4Rec.

    With both switches off the model is RecBole's GRU4Rec (one full table, tied to the output scores, same
    parameter count). With only the input adaptive, the output scores use a separate full item table (the input no
    longer has one to tie to).

    Departures from the paper: RecBole's GRU4Rec ties the output to the input table, whereas the paper's GRU4Rec
    (69M parameters on Weishi, two 66K x 512 tables) has separate ones; the benchmark compares against RecBole's,
    so the compression ratio against a tied model is smaller than the paper's. The paper trains GRU4Rec on every
    position ("autoregressively"); RecBole's augmented prefixes with the loss at the last position do the same work.
    """

    counterpart = "GRU4Rec"
    config_keys = (
        Key("embedding_size", int, low=1),
        Key("hidden_size", int, low=1),
        Key("num_layers", int, low=1),
        Key("dropout_prob", float, low=0, high=1, high_open=True),
        Key("loss_type", str, choices=("CE",)),
        Key("adaptive_input", bool),
        Key("adaptive_output", bool),
    ) + BLOCK_KEYS
    data_rules = (BLOCKS_RULE,)

    def __init__(self, config, dataset):
        super(GRU4RecAdaptive, self).__init__(config, dataset)

        self.embedding_size = config["embedding_size"]
        self.hidden_size = config["hidden_size"]
        self.loss_type = config["loss_type"]
        self.num_layers = config["num_layers"]
        self.dropout_prob = config["dropout_prob"]
        self.adaptive_input = config["adaptive_input"]
        self.adaptive_output = config["adaptive_output"]

        d = self.embedding_size
        self.blocks, self.cluster_dims = None, None
        if self.adaptive_input or self.adaptive_output:
            self.blocks, self.cluster_dims = blocks_from_config(config, dataset, d)

        if self.adaptive_input:
            self.item_embedding = AdaptiveEmbedding(self.blocks, d, self.cluster_dims)
        else:
            self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        self.emb_dropout = FastDropout(self.dropout_prob)
        self.gru_layers = nn.GRU(
            input_size=d,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bias=False,
            batch_first=True,
        )
        self.dense = nn.Linear(self.hidden_size, d)
        if self.adaptive_output:
            self.output_layer = AdaptiveSoftmax(self.blocks, d, self.cluster_dims)
        elif self.adaptive_input:
            self.output_layer = nn.Embedding(self.n_items, d, padding_idx=0)
        else:
            self.output_layer = None  # tied to the full input table, as RecBole's GRU4Rec

        # RecBole's GRU4Rec initialisation for the full tables and the GRU; the adaptive layers keep their own
        for module in (self.item_embedding, self.output_layer):
            if isinstance(module, nn.Embedding):
                xavier_normal_(module.weight)
        for name, weight in self.gru_layers.named_parameters():
            if name.startswith("weight_"):
                xavier_uniform_(weight)

    def _output_table(self):
        return self.item_embedding.weight if self.output_layer is None else self.output_layer.weight

    def forward(self, item_seq, item_seq_len):
        item_seq_emb = self.emb_dropout(self.item_embedding(item_seq))
        gru_output, _ = self.gru_layers(item_seq_emb)
        gru_output = self.dense(gru_output)
        return self.gather_indexes(gru_output, item_seq_len - 1)

    def calculate_loss(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        pos_items = interaction[self.POS_ITEM_ID]
        if self.adaptive_output:
            return self.output_layer(seq_output, pos_items)
        logits = torch.matmul(seq_output, self._output_table().transpose(0, 1))
        return nn.functional.cross_entropy(logits, pos_items)

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        test_item = interaction[self.ITEM_ID]
        if self.adaptive_output:
            return self.output_layer.target_log_prob(seq_output, test_item)
        return (seq_output * self._output_table()[test_item]).sum(dim=1)

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        if self.adaptive_output:
            return self.output_layer.full_log_prob(seq_output)
        return torch.matmul(seq_output, self._output_table().transpose(0, 1))

    def param_breakdown(self):
        count = lambda m: 0 if m is None else sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {
            "input": count(self.item_embedding),
            "middle": count(self.gru_layers) + count(self.dense),
            "output": count(self.output_layer),
        }
        parts["total"] = sum(p.numel() for p in self.parameters())
        return parts

    def benchmark_report(self):
        report = {"adaptive_input": self.adaptive_input, "adaptive_output": self.adaptive_output}
        if self.blocks is not None:
            report["cluster_sizes"] = self.blocks.sizes
            report["cluster_dims"] = self.cluster_dims
        return report
