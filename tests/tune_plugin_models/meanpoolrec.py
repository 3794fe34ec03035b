"""MeanPoolRec: the smallest sequential recommender (mean of the item embeddings, dot product with every item), used
by the tests as a plugin model that RecBole itself does not know."""
import torch
from torch import nn
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.config_keys import Key


class MeanPoolRec(SequentialRecommender):
    """Mean-pooled item embeddings with dropout; CE over all items."""

    # the keys it reads, so that the plugin's checks know them (a typo in a params file or YAML is refused)
    config_keys = (
        Key("embedding_size", int, low=1),
        Key("pool_dropout", float, low=0, high=1, high_open=True, none_ok=True),
        Key("loss_type", str, choices=("CE",)),
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.pool_dropout = config["pool_dropout"] if config["pool_dropout"] is not None else 0.0
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.dropout = nn.Dropout(self.pool_dropout)
        self.loss_fct = nn.CrossEntropyLoss()

    def forward(self, item_seq, item_seq_len):
        emb = self.item_embedding(item_seq)
        mask = (item_seq > 0).unsqueeze(-1).float()
        pooled = (emb * mask).sum(1) / item_seq_len.clamp(min=1).unsqueeze(-1).float()
        return self.dropout(pooled)

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
