r"""
AdaRec
################################################

Reference:
    Lei Chen, Fajie Yuan, Jiaxi Yang, Chengming Li, Min Yang. "Scene-adaptive Knowledge Distillation for Sequential
    Recommendation via Differentiable Architecture Search", WANT@NeurIPS 2023.

The student AdaRec derives: an item embedding (width ``embedding_size``, a quarter of the teacher's in the paper) with
learned positions, ``num_cells`` stacked cells of one searched *genotype* (one operation per edge of a DAG of
``num_nodes`` nodes, :class:`recbole_compress.model.layers.nas_cell.NASCell`) and an untied softmax layer over items.

``python run_recbole_compress.py --model=AdaRec`` runs every phase in one run, on one split
(:class:`recbole_compress.trainer.adarec.AdaRecTrainer`): train the teacher (``teacher_*`` keys), search the
architecture with the distillation and cost-sensitive losses (:class:`AdaRecSearch`, ``search_*`` keys), derive the
argmax genotype (saved as JSON and in this model's checkpoint config as ``adarec_arch``), and retrain this student
(warm-started from the supernet or from scratch, ``retrain_init``). A given ``teacher_checkpoint`` skips the teacher
phase; a genotype (``adarec_arch`` inline, or ``adarec_arch_file``) or a ``search_checkpoint`` skips the search too.

Departures from the paper, and why:

- Trained and searched on RecBole's prefix-augmented sequences with the loss at the last valid position, where the
  input never contains the target. The authors' code trains left-to-right on every position, where the non-causal
  operations (standard/dilated convolutions, pooling) see the next item, i.e. the label.
- Right padding with id 0 and ``padding_idx=0`` (the authors' code left-pads). Padded positions are masked: they are
  zero after the embedding (no position embedding) and after every operation, and the convolutions' BatchNorm takes
  its statistics over valid positions only, so the representation at the last valid item does not depend on how much
  padding follows it (the authors' code feeds padding, with its position embeddings, through every operation and
  into the BatchNorm statistics).
- Retraining is cross-entropy only, as the authors' fine-tuning script does (the paper does not say); the
  cross-scene protocol's retraining with the teacher is not implemented.
"""
import json
from logging import getLogger

import torch
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.model.layers.nas_cell import NASCell, validate_genotype
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS, parse_op_name
from recbole_compress.config_keys import Key, Phase, Relation

# keys that define the student's structure: the search phase uses the student's values (its weights warm-start it)
ARCH_KEYS = ("embedding_size", "num_cells", "num_nodes", "dropout_prob", "op_dilation", "pool_kernel", "layer_norm_eps")
TEACHER_MODELS = ("AdaRecNextItNetTeacher", "AdaRecSASRecTeacher")
RETRAIN_INITS = ("supernet", "random")
GENOTYPE_WORDS = (f"num_nodes lists, the j-th naming one operation per incoming edge (j names), each one of "
                  f"{', '.join(CANDIDATE_OPS)}")


def genotype_to_json(genotype, **extra):
    """The genotype file's content (JSON text): ``{"genotype": [[...], ...], "op_names": [...], ...extra}``."""
    data = {"genotype": genotype, "op_names": list(CANDIDATE_OPS)}
    data.update(extra)
    return json.dumps(data, indent=2, default=str)


def read_genotype_file(path):
    """``(genotype, data)`` from a genotype JSON file (a dict with ``genotype``, or a bare list of lists).

    Raises:
        OSError: the file cannot be read. ValueError: it is not JSON, or a dict without a ``genotype`` entry.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        if "genotype" not in data:
            raise ValueError(f"{path!r} has no 'genotype' entry")
        return data["genotype"], data
    return data, {}


def parse_genotype(arch, num_nodes):
    """The genotype ``adarec_arch`` gives (a list of lists, or its JSON text), checked against ``num_nodes``.

    Raises:
        ValueError: not JSON, or not one list of known operation names per node.
    """
    if isinstance(arch, str):
        arch = json.loads(arch)
    return validate_genotype(arch, num_nodes, CANDIDATE_OPS, key="adarec_arch")


def genotype_given(config):
    """True when ``adarec_arch`` holds a genotype (set by the user, or resolved from a file or a checkpoint)."""
    return config["adarec_arch"] not in (None, "")


def genotype_file_ok(config):
    """True when ``adarec_arch_file`` is a JSON file whose ``genotype`` fits ``num_nodes`` (read by the preflight
    check, never by the model)."""
    try:
        genotype, _ = read_genotype_file(config["adarec_arch_file"])
    except OSError:
        return False
    validate_genotype(genotype, config["num_nodes"], CANDIDATE_OPS, key="adarec_arch_file")
    return True


#: The student's structure (shared with the search supernet, :class:`AdaRecSearch`).
STRUCTURE_KEYS = (
    Key("embedding_size", int, low=1),
    Key("num_cells", int, low=1),
    Key("num_nodes", int, low=1),
    Key("dropout_prob", float, low=0, high=1, high_open=True),
    Key("op_dilation", int, low=1),
    Key("pool_kernel", int, low=1),
    Key("layer_norm_eps", float, low=0, low_open=True),
    Key("loss_type", str, choices=("CE",)),
)
STRUCTURE_RELATIONS = (
    Relation(("pool_kernel",), lambda c: c["pool_kernel"] % 2 == 1, "pool_kernel must be odd (pooling keeps the "
             "length)"),
)
#: ``adarec_arch``, read by the student only (declared by its trainer, which also writes it: the search supernet
#: inherits the student's keys but has no genotype).
GENOTYPE_KEYS = (Key("adarec_arch"),)  # a list of lists, its JSON text, or None (checked by the relation below)
GENOTYPE_RELATIONS = (
    Relation(("adarec_arch", "num_nodes"), lambda c: parse_genotype(c["adarec_arch"], c["num_nodes"]) is not None,
             f"adarec_arch must be a list (or its JSON text) of {GENOTYPE_WORDS}", when=genotype_given),
)


class AdaRec(SequentialRecommender):
    r"""AdaRec's derived student: embedding + positions, ``num_cells`` cells of one genotype, untied output layer.

    Built without a genotype (the usual all-phases run) the cells are empty until :meth:`set_genotype`, which the
    trainer calls after the search.
    """

    counterpart = "teacher"
    # the phases before the student's retraining: the teacher, then the search supernet (with the student's structure)
    phases = (
        Phase("teacher_", "AdaRecNextItNetTeacher", models=TEACHER_MODELS),
        Phase("search_", "AdaRecSearch", configurable=False, inherit=ARCH_KEYS, match=ARCH_KEYS),
    )

    config_keys = STRUCTURE_KEYS
    config_relations = STRUCTURE_RELATIONS

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.num_cells = config["num_cells"]
        self.num_nodes = config["num_nodes"]
        self.op_dilation = config["op_dilation"]
        self.pool_kernel = config["pool_kernel"]
        self.layer_norm_eps = config["layer_norm_eps"]

        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.embedding_size)
        self.emb_dropout = FastDropout(config["dropout_prob"])
        self.cells = nn.ModuleList()
        self.out_dropout = FastDropout(config["dropout_prob"])
        self.output = nn.Linear(self.embedding_size, self.n_items)
        self.loss_fct = nn.CrossEntropyLoss()
        self.genotype = None
        self._teacher = None
        self._build(config, dataset)

    def _build(self, config, dataset):
        """The cells, if the genotype is already known (``adarec_arch``: given, or read from ``adarec_arch_file`` or
        ``search_checkpoint`` by the trainer before the model is built); else the trainer searches it."""
        if genotype_given(config):
            self.set_genotype(parse_genotype(config["adarec_arch"], self.num_nodes))

    # -- structure -----------------------------------------------------------------------------------------------
    def set_genotype(self, genotype):
        """Build the ``num_cells`` cells of ``genotype`` (one operation name per edge, nested by node)."""
        genotype = validate_genotype(genotype, self.num_nodes, CANDIDATE_OPS, key="adarec_arch")
        device = self.item_embedding.weight.device
        self.cells = nn.ModuleList(
            NASCell(self.embedding_size, self.num_nodes, genotype, CANDIDATE_OPS, self.op_dilation, self.pool_kernel,
                    self.layer_norm_eps)
            for _ in range(self.num_cells)
        ).to(device)
        self.genotype = genotype
        if all(name == "none" for name in genotype[-1]):
            getLogger().warning("AdaRec genotype: every edge into the last node is 'none'")

    def set_teacher(self, teacher):
        """Keep the trained teacher (not a submodule: it is not saved, counted or optimised with the student)."""
        object.__setattr__(self, "_teacher", teacher)  # not a submodule: never saved, counted or optimised

    @property
    def teacher(self):
        return self._teacher

    @torch.no_grad()
    def load_supernet_weights(self, state_dict):
        """Warm start: copy every tensor of ``state_dict`` (a supernet's) whose name and shape this model has.

        Returns:
            (copied names, names of this model that were not in ``state_dict``)
        """
        own = self.state_dict()
        copied = []
        for name, tensor in state_dict.items():
            if name in own and own[name].shape == tensor.shape:
                own[name].copy_(tensor.to(own[name].device))
                copied.append(name)
        missing = [name for name in own if name not in copied]
        return copied, missing

    # -- forward -------------------------------------------------------------------------------------------------
    def _encode(self, item_seq, weights=None):
        """``(embedding [B, L, d], outputs of every cell)``, zero at padded positions; ``weights``: operation weights
        of a supernet."""
        if len(self.cells) == 0:
            raise RuntimeError(
                "AdaRec has no architecture yet: train it through its trainer (which searches one), or give "
                "adarec_arch, adarec_arch_file or search_checkpoint"
            )
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        mask = item_seq != 0
        emb = self.emb_dropout(self.item_embedding(item_seq) + self.position_embedding(positions))
        emb = emb * mask.unsqueeze(-1).to(emb.dtype)  # padded positions hold nothing, not their position embedding
        h, outs = emb, []
        for cell in self.cells:
            h = cell(h, weights, mask)
            outs.append(h)
        return emb, outs

    def _eval_weights(self):
        return None

    def forward(self, item_seq, item_seq_len):
        _, outs = self._encode(item_seq, self._eval_weights())
        return self.gather_indexes(outs[-1], item_seq_len - 1)

    def calculate_loss(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.loss_fct(self.output(self.out_dropout(h)), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        h = self.out_dropout(self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]))
        item = interaction[self.ITEM_ID]
        return (h * self.output.weight[item]).sum(-1) + self.output.bias[item]

    def full_sort_predict(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.output(self.out_dropout(h))

    # -- reports (read by the benchmark) -------------------------------------------------------------------------
    def param_breakdown(self):
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        return {
            "item_embedding": count(self.item_embedding),
            "position_embedding": count(self.position_embedding),
            "cells": count(self.cells),
            "output": count(self.output),
        }

    def benchmark_report(self):
        convs = [name for node in (self.genotype or []) for name in node if parse_op_name(name)[1] is not None]
        params = sum(p.numel() for p in self.parameters())
        return {
            "genotype": self.genotype,
            "conv_ops_per_cell": len(convs),
            "params_Mi": params / 2**20,
        }
