r"""
AdaRecNextItNetTeacher
################################################

Reference:
    Lei Chen, Fajie Yuan, Jiaxi Yang, Chengming Li, Min Yang. "Scene-adaptive Knowledge Distillation for Sequential
    Recommendation via Differentiable Architecture Search", WANT@NeurIPS 2023 (§3.1, App. A.2, Eqs. 18-20); the
    block is NextItNet's (Yuan et al., WSDM 2019).

The NextItNet-style teacher of AdaRec, exposing what distillation needs: the sequence embedding, the hidden states at
the distillation taps and the next-item logits (:meth:`forward_distill`).

- Residual block ``E_l = E_{l-1} + lambda_l * ReLU(LN2(psi2(ReLU(LN1(psi1(E_{l-1}))))))`` with causal convolutions
  ``psi1`` (dilation ``r``) and ``psi2`` (dilation ``2r``), ``r`` cycling through ``dilations`` ``block_num`` times
  (the paper's ``8 x {1, 2, 4, 8}`` = 16 blocks with ``dilations: [1, 4]``, ``block_num: 8``); ``lambda_l`` is a
  learnable scalar initialised to 0 (Eq. 18's learnable coefficient; ``use_rezero: False`` fixes it to 1).
- Untied output layer with bias, ``p(x_{n+1}) = softmax(W V + b)`` (Eq. 20); the authors' initialisation.
- Distillation taps: the output of every ``distill_tap_every``-th residual block (every {1,2,4,8} cycle: 8 taps for
  16 blocks).

Departures from the paper, and why:

- Trained on RecBole's prefix-augmented sequences with cross-entropy at the last valid position (the paper trains
  left-to-right on every position); right padding with id 0 (the authors' code left-pads) and ``padding_idx=0``.
  Causal convolutions make the output at the last valid position independent of the padding either way.
- No learning-rate schedule in RecBole 1.2.1's Trainer: :class:`recbole_compress.trainer.adarec.StepLRTrainer` adds
  the authors' StepLR (``lr_decay_step``, ``lr_decay_gamma``).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.config_keys import Key, Relation


class CausalConv1d(nn.Module):
    """Conv1d over ``[B, L, d]`` with left padding ``(k-1)*dilation``: output ``t`` sees inputs ``<= t`` only."""

    def __init__(self, channels, kernel_size, dilation):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x):
        return self.conv(F.pad(x.transpose(1, 2), (self.left_pad, 0))).transpose(1, 2)


class NextItNetBlock(nn.Module):
    """NextItNet residual block (two causal convolutions, dilations ``r`` and ``2r``) with a ReZero coefficient."""

    def __init__(self, channels, kernel_size, dilation, rezero=True, layer_norm_eps=1e-8):
        super().__init__()
        self.conv1 = CausalConv1d(channels, kernel_size, dilation)
        self.ln1 = nn.LayerNorm(channels, eps=layer_norm_eps)
        self.conv2 = CausalConv1d(channels, kernel_size, 2 * dilation)
        self.ln2 = nn.LayerNorm(channels, eps=layer_norm_eps)
        if rezero:
            self.rezero = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("rezero", torch.ones(1))

    def forward(self, x):
        h = F.relu(self.ln1(self.conv1(x)))
        h = F.relu(self.ln2(self.conv2(h)))
        return x + self.rezero * h


class AdaRecNextItNetTeacher(SequentialRecommender):
    r"""NextItNet teacher of AdaRec: causal dilated residual blocks, untied output layer, distillation taps."""

    config_keys = (
        Key("embedding_size", int, low=1),
        Key("kernel_size", int, low=1),
        Key("block_num", int, low=1),
        Key("dilations", list, items=int, low=1, nonempty=True),
        Key("use_rezero", bool),
        Key("distill_tap_every", int, low=1),
        Key("layer_norm_eps", float, low=0, low_open=True),
        Key("loss_type", str, choices=("CE",)),
    )
    config_relations = (
        Relation(("distill_tap_every", "block_num", "dilations"),
                 lambda c: (c["block_num"] * len(c["dilations"])) % c["distill_tap_every"] == 0,
                 "distill_tap_every must divide the number of residual blocks, block_num x len(dilations)"),
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.kernel_size = config["kernel_size"]
        self.block_num = config["block_num"]
        self.dilations = list(config["dilations"])
        self.tap_every = config["distill_tap_every"]

        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.blocks = nn.ModuleList(
            NextItNetBlock(self.embedding_size, self.kernel_size, int(r), config["use_rezero"], config["layer_norm_eps"])
            for r in self.dilations * self.block_num
        )
        self.output = nn.Linear(self.embedding_size, self.n_items)
        self.loss_fct = nn.CrossEntropyLoss()
        self._init_weights()

    def _init_weights(self):
        bound = math.sqrt(1.0 / self.n_items)
        nn.init.uniform_(self.item_embedding.weight, -bound, bound)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        nn.init.normal_(self.output.weight, 0.0, 0.01)
        nn.init.constant_(self.output.bias, 0.1)

    @property
    def distill_width(self):
        """Width ``d_T`` of the embedding and hidden states given to a student."""
        return self.embedding_size

    @property
    def num_distill_layers(self):
        """Number ``N`` of hidden states :meth:`forward_distill` returns."""
        return len(self.blocks) // self.tap_every

    def _encode(self, item_seq):
        emb = self.item_embedding(item_seq)
        h, taps = emb, []
        for index, block in enumerate(self.blocks, start=1):
            h = block(h)
            if index % self.tap_every == 0:
                taps.append(h)
        return emb, taps, h

    def forward(self, item_seq, item_seq_len):
        _, _, h = self._encode(item_seq)
        return self.gather_indexes(h, item_seq_len - 1)

    def forward_distill(self, item_seq, item_seq_len):
        """``(embedding [B, L, d], taps: N x [B, L, d], logits at the last valid position [B, n_items])``."""
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
