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
import os
from logging import getLogger

import torch
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.model.layers.nas_cell import NASCell, validate_genotype
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS, parse_op_name
from recbole_compress.config_keys import Phase
from recbole_compress.errors import ConfigError

# keys that define the student's structure: the search phase uses the student's values (its weights warm-start it)
ARCH_KEYS = ("embedding_size", "num_cells", "num_nodes", "dropout_prob", "op_dilation", "pool_kernel", "layer_norm_eps")
TEACHER_MODELS = ("AdaRecNextItNetTeacher", "AdaRecSASRecTeacher")
RETRAIN_INITS = ("supernet", "random")


def genotype_to_json(genotype, **extra):
    """The genotype file's content (JSON text): ``{"genotype": [[...], ...], "op_names": [...], ...extra}``."""
    data = {"genotype": genotype, "op_names": list(CANDIDATE_OPS)}
    data.update(extra)
    return json.dumps(data, indent=2, default=str)


def read_genotype_file(path):
    """``(genotype, data)`` from a genotype JSON file (a dict with ``genotype``, or a bare list of lists)."""
    if not os.path.isfile(str(path)):
        raise ConfigError(f"adarec_arch_file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise ConfigError(f"adarec_arch_file {path!r} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        if "genotype" not in data:
            raise ConfigError(f"adarec_arch_file {path!r} has no 'genotype' entry")
        return data["genotype"], data
    return data, {}


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

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.num_cells = config["num_cells"]
        self.num_nodes = config["num_nodes"]
        self.op_dilation = config["op_dilation"]
        self.pool_kernel = config["pool_kernel"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self._check_structure(config)

        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.embedding_size)
        self.emb_dropout = nn.Dropout(config["dropout_prob"])
        self.cells = nn.ModuleList()
        self.out_dropout = nn.Dropout(config["dropout_prob"])
        self.output = nn.Linear(self.embedding_size, self.n_items)
        self.loss_fct = nn.CrossEntropyLoss()
        self.genotype = None
        self._teacher = None
        self._build(config, dataset)

    # -- configuration -------------------------------------------------------------------------------------------
    def _check_structure(self, config):
        for key in ("embedding_size", "num_cells", "num_nodes", "op_dilation", "pool_kernel"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ConfigError(f"{key} must be a positive int, got {config[key]!r}")
        if self.pool_kernel % 2 != 1:
            raise ConfigError(f"pool_kernel must be odd (pooling keeps the length), got {self.pool_kernel}")
        if not 0 <= config["dropout_prob"] < 1:
            raise ConfigError(f"dropout_prob must be in [0, 1), got {config['dropout_prob']!r}")
        if config["loss_type"] != "CE":
            raise ConfigError(f"loss_type must be 'CE' for {type(self).__name__}, got {config['loss_type']!r}")

    def _build(self, config, dataset):
        """Check the phase settings and build the cells if the genotype is already known."""
        if config["retrain_init"] not in RETRAIN_INITS:
            raise ConfigError(f"retrain_init must be one of {', '.join(RETRAIN_INITS)}, got {config['retrain_init']!r}")
        genotype, source = self._configured_genotype(config, dataset)
        if genotype is not None:
            self.set_genotype(genotype)
            self.genotype_source = source
        if genotype is not None and config["retrain_init"] == "supernet" and not self.search_checkpoint:
            raise ConfigError(
                "retrain_init: supernet warm-starts the student from the search phase's supernet, but the architecture "
                f"comes from {source} and no search_checkpoint is set: give search_checkpoint, or retrain_init: random"
            )

    def _configured_genotype(self, config, dataset):
        """The genotype the config gives (``adarec_arch``, ``adarec_arch_file`` or ``search_checkpoint``), if any."""
        self.search_checkpoint = config["search_checkpoint"]
        arch = config["adarec_arch"]
        if arch is not None and arch != "":
            if isinstance(arch, str):
                try:
                    arch = json.loads(arch)
                except ValueError as e:
                    raise ConfigError(f"adarec_arch must be a JSON list of lists of operation names: {e}") from None
            return self._validated(arch, "adarec_arch"), "adarec_arch"
        path = config["adarec_arch_file"]
        if path:
            genotype, data = read_genotype_file(path)
            if not self.search_checkpoint:
                self.search_checkpoint = (data.get("source") or {}).get("search_checkpoint")
            return self._validated(genotype, "adarec_arch_file"), f"adarec_arch_file {path}"
        if self.search_checkpoint:
            from recbole_compress.checkpoint import check_item_mapping, load_checkpoint

            checkpoint = load_checkpoint(self.search_checkpoint)
            check_item_mapping(checkpoint, dataset, f"search_checkpoint {self.search_checkpoint!r}")
            genotype = (checkpoint.get("other_parameter") or {}).get("genotype")
            if genotype is None:
                raise ConfigError(f"search_checkpoint {self.search_checkpoint!r} is not an AdaRecSearch checkpoint")
            return self._validated(genotype, "search_checkpoint"), f"search_checkpoint {self.search_checkpoint}"
        return None, None

    def _validated(self, genotype, key):
        try:
            return validate_genotype(genotype, self.num_nodes, CANDIDATE_OPS, key=key)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    # -- structure -----------------------------------------------------------------------------------------------
    def set_genotype(self, genotype):
        """Build the ``num_cells`` cells of ``genotype`` (one operation name per edge, nested by node)."""
        genotype = self._validated(genotype, "adarec_arch")
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
