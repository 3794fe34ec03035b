"""Compression of the item table of any sequential model: ``item_compression: qr | adaptive | codebook``.

A RecBole (or plugin) sequential model keeps its items in ``item_embedding`` (an ``n_items x D`` ``nn.Embedding``)
and, with the CE loss, scores the catalogue with ``item_embedding.weight``. :func:`compress_item_table` replaces that
table by one of the plugin's blocks, so a model a user already trusts shrinks without a new model class:

- ``qr``: :class:`~recbole_compress.model.layers.compositional_embedding.QuotientRemainderEmbedding` with
  ``compression_rate`` m and ``num_base_tables`` N, merged by ``qr_composition`` (``mult`` by default: the element-wise
  product keeps the items of a quotient row apart, where a sum gives them one shared difference vector; see LSAN's
  measurements in docs/LSAN.md). Its ``weight`` is the merged table, so the model's own scoring is unchanged.
- ``adaptive``: CpRec's frequency-blocked :class:`~recbole_compress.model.layers.adaptive_embedding.AdaptiveEmbedding`
  for the input and :class:`~recbole_compress.model.layers.adaptive_softmax.AdaptiveSoftmax` for the output (blocks of
  the training split's item frequencies: ``n_clusters``, ``cluster_split_ratio``, ``cluster_cutoffs``,
  ``cluster_dim_factor``, ``cluster_dims``). The loss is the block softmax's own exact cross-entropy and full ranking
  its log-probabilities, so the model needs the CE loss and a sequence representation (``forward``).
- ``codebook``: EODRec's :class:`~recbole_compress.model.layers.codebook_embedding.CodebookEmbedding`, ``num_codebooks``
  M codes per item into codebooks of ``codebook_size`` K vectors. The codes are fixed before training. With
  ``codebook_teacher`` (a checkpoint of a trained model of the same width on the same data, e.g. the plain model's),
  the run layer fits codes and codebooks to the teacher's item table with EODRec's code encoder before the first
  epoch and gives every item its own code (:func:`fit_item_codes`); without it the codes are drawn at random
  (compositional hashing: with K^M tuples far above the catalogue, items rarely share one) and only the codebooks
  learn. Its ``weight`` is the composite table,
  so the model's own scoring is unchanged.

The model keeps its class name, and the settings are in its config and checkpoint, so it restores as compressed.
:func:`compressible` gives the class :func:`recbole_compress.registry.get_model` returns for a sequential model: the
model's own class, compressed in its constructor when the config asks for it.
"""
import importlib
import inspect
import types

import torch
from torch import nn

from recbole_compress.config_keys import DataRule, Key, Relation
from recbole_compress.errors import ConfigError
from recbole_compress.model.layers.adaptive_embedding import AdaptiveEmbedding
from recbole_compress.model.layers.adaptive_softmax import AdaptiveSoftmax
from recbole_compress.model.layers.codebook_embedding import CodebookEmbedding, code_statistics
from recbole_compress.model.layers.compositional_embedding import (
    QuotientRemainderEmbedding,
    not_smaller_problem,
    qr_table_sizes,
)
from recbole_compress.model.layers.frequency_blocks import BLOCK_KEYS, blocks_from_config

METHODS = ("qr", "adaptive", "codebook")
QR_KEYS = ("compression_rate", "num_base_tables", "qr_composition")
CODEBOOK_KEYS = ("num_codebooks", "codebook_size", "codebook_teacher")
BLOCK_KEY_NAMES = tuple(k.name for k in BLOCK_KEYS)

#: The keys of the switch and its blocks, for every model that can take it.
ITEM_COMPRESSION_KEYS = (
    Key("item_compression", str, choices=METHODS, none_ok=True),
    Key("compression_rate", int, low=1, none_ok=True),
    Key("num_base_tables", int, low=1, none_ok=True),
    Key("qr_composition", str, choices=QuotientRemainderEmbedding.COMBINE, none_ok=True),
    Key("num_codebooks", int, low=1, none_ok=True),
    Key("codebook_size", int, low=2, none_ok=True),
    Key("codebook_teacher", str, none_ok=True, file=True),
) + tuple(Key(k.name, k.kind, low=k.low, high=k.high, low_open=k.low_open, high_open=k.high_open, items=k.items,
              nonempty=k.nonempty, none_ok=True) for k in BLOCK_KEYS)


def _only_with(method, names):
    return Relation(("item_compression",) + names,
                    lambda c: c["item_compression"] == method or all(c[k] is None for k in names),
                    f"{', '.join(names)} configure item_compression: {method} only; set item_compression: {method} "
                    f"or leave them unset",
                    when=lambda c: c["item_compression"] != method)


ITEM_COMPRESSION_RELATIONS = (
    _only_with("qr", QR_KEYS), _only_with("codebook", CODEBOOK_KEYS), _only_with("adaptive", BLOCK_KEY_NAMES),
)

#: Defaults of the blocks' keys. No property file sets them (an unset key reads as None in a Config, and adding them
#: to overall.yaml would change every model's defaults digest, so no earlier benchmark training could be reused);
#: a key is read only with its block.
DEFAULTS = {"compression_rate": 2, "num_base_tables": 2, "qr_composition": "mult", "num_codebooks": 4,
            "codebook_size": 32, "n_clusters": 3, "cluster_split_ratio": 0.2, "cluster_dim_factor": 4}
#: EODRec's code fitting (steps, Adam learning rate, rows per step, Gumbel temperature from ... to)
CODE_FIT = {"steps": 2000, "lr": 0.01, "batch_size": 4096, "tau_start": 1.0, "tau": 0.3}

#: Models whose item table is already compressed (or that have none in the required form), with the reason.
REFUSED = {
    "LSAN": "LSAN composes its item table from quotient-remainder base tables itself (compression_rate)",
    "CpRec": "CpRec's item tables are already adaptive (adaptive_input, adaptive_output)",
    "GRU4RecAdaptive": "GRU4RecAdaptive's item tables are already adaptive (adaptive_input, adaptive_output)",
    "EODRec": "EODRec's item table is already a codebook (num_codebooks, codebook_size)",
    "EODRecTeacher": "EODRecTeacher is EODRec's uncompressed teacher: compress it as EODRec",
    "AdaRec": "AdaRec compresses by architecture search; its item table is the student's own",
    "AdaRecSearch": "AdaRecSearch is AdaRec's internal search phase",
    "AdaRecNextItNetTeacher": "it is AdaRec's uncompressed teacher: compress it as AdaRec",
    "AdaRecSASRecTeacher": "it is AdaRec's uncompressed teacher: compress it as AdaRec",
    "BERT4Rec": "BERT4Rec's item table has an extra row, its mask token, that no block can represent",
}


def size_problem(config, dataset):
    """A message when the compressed table would not be smaller than the full ``n_items x D`` one (a rule that needs
    the catalogue's size, checked right after the dataset loads), else None."""
    method = config["item_compression"]
    n_items = dataset.item_num
    if method == "qr":
        sizes = qr_table_sizes(n_items - 1, setting(config, "compression_rate"), setting(config, "num_base_tables"))
        return not_smaller_problem(sizes, n_items - 1)
    if method == "codebook":
        rows = setting(config, "num_codebooks") * setting(config, "codebook_size")
        if rows >= n_items - 1:
            return (f"{setting(config, 'num_codebooks')} codebooks of {setting(config, 'codebook_size')} vectors "
                    f"({rows} rows) are not smaller than the {n_items - 1}-item table they replace: lower "
                    f"codebook_size or num_codebooks")
    return None


def setting(config, key):
    value = config[key]
    return DEFAULTS.get(key) if value is None else value


def refusal(model_class):
    """Why ``model_class`` cannot take ``item_compression`` (None if it can, as far as its class tells)."""
    for klass in getattr(model_class, "__mro__", ()):
        if klass.__name__ in REFUSED:
            return REFUSED[klass.__name__]
    if getattr(model_class, "type", None) is None or model_class.type.name != "SEQUENTIAL":
        return f"{model_class.__name__} is not a sequential model"
    return None


def _table(model):
    table = getattr(model, "item_embedding", None)
    if not isinstance(table, nn.Embedding) or table.num_embeddings != model.n_items:
        raise ConfigError(
            f"item_compression needs the model's item table as item_embedding, an nn.Embedding of n_items "
            f"({model.n_items}) rows; {type(model).__name__} has {type(table).__name__ if table is not None else 'none'}"
        )
    return table


def compress_item_table(model, config, dataset=None):
    """Replace ``model.item_embedding`` by the block ``config['item_compression']`` asks for; returns ``model``.

    ``config`` is a RecBole Config or a dict with the block's keys (missing keys take :data:`DEFAULTS`); ``dataset``
    (the training split) is needed by ``adaptive`` for the item frequencies. Works on a model built elsewhere, e.g.
    ``compress_item_table(SASRec(config, dataset), {"item_compression": "qr", "compression_rate": 4})``.

    Raises:
        ConfigError: the model cannot take the block (the message says why).
    """
    config = _Settings(config)
    method = config["item_compression"]
    if method is None:
        return model
    reason = refusal(type(model))
    if reason:
        raise ConfigError(f"item_compression={method!r} cannot apply to {type(model).__name__}: {reason}")
    table = _table(model)
    n_items, dim = table.num_embeddings, table.embedding_dim
    if method == "qr":
        sizes = qr_table_sizes(n_items - 1, setting(config, "compression_rate"), setting(config, "num_base_tables"))
        model.item_embedding = QuotientRemainderEmbedding(n_items - 1, dim, table_sizes=sizes,
                                                          combine=setting(config, "qr_composition"))
    elif method == "codebook":
        block = CodebookEmbedding(n_items, dim, setting(config, "num_codebooks"), setting(config, "codebook_size"))
        generator = torch.Generator().manual_seed(int(config["seed"] or 0))
        block.set_codes(torch.randint(0, block.codebook_size, tuple(block.codes.shape), generator=generator))
        model.item_embedding = block
    else:
        _make_adaptive(model, config, dataset, dim)
    model.item_embedding.to(table.weight.device)
    return model


class _Settings:
    """A dict or Config read like a Config (a missing key is None)."""

    def __init__(self, config):
        self.config = config

    def __getitem__(self, key):
        if isinstance(self.config, dict):
            return self.config.get(key)
        return self.config[key]


def _make_adaptive(model, config, dataset, dim):
    if dataset is None:
        raise ConfigError("item_compression: adaptive needs the training split for its frequency blocks")
    if getattr(model, "loss_type", "CE") != "CE":
        raise ConfigError(f"item_compression: adaptive replaces the output by a block softmax, which is a CE loss; "
                          f"{type(model).__name__} has loss_type={model.loss_type!r}: set loss_type: CE")
    settings = {k: setting(config, k) for k in BLOCK_KEY_NAMES}
    blocks, dims = blocks_from_config(settings, dataset, dim)
    model.item_embedding = AdaptiveEmbedding(blocks, dim, dims)
    model.item_softmax = AdaptiveSoftmax(blocks, dim, dims)
    if not isinstance(model, CompressibleMixin):  # a model built elsewhere: its scoring goes through the block too
        for name in ("calculate_loss", "predict", "full_sort_predict"):
            setattr(model, name, types.MethodType(getattr(CompressibleMixin, name), model))


def sequence_output(model, interaction):
    """The model's representation of each sequence ``[B, D]``: its ``forward(item_seq[, item_seq_len])``, gathered
    at the last item when it returns every position."""
    item_seq, item_seq_len = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    if len(inspect.signature(model.forward).parameters) >= 2:
        out = model.forward(item_seq, item_seq_len)
    else:
        out = model.forward(item_seq)
    return model.gather_indexes(out, item_seq_len - 1) if out.dim() == 3 else out


class CompressibleMixin:
    """Mixed into a model class by :func:`compressible`: after the model's own constructor, its item table is
    compressed when ``item_compression`` is set; with the adaptive block, loss and scores go through the block
    softmax."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        compress_item_table(self, config, dataset)

    def calculate_loss(self, interaction):
        if not hasattr(self, "item_softmax"):
            return super(CompressibleMixin, self).calculate_loss(interaction)
        return self.item_softmax(sequence_output(self, interaction), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        if not hasattr(self, "item_softmax"):
            return super(CompressibleMixin, self).predict(interaction)
        return self.item_softmax.target_log_prob(sequence_output(self, interaction), interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        if not hasattr(self, "item_softmax"):
            return super(CompressibleMixin, self).full_sort_predict(interaction)
        return self.item_softmax.full_log_prob(sequence_output(self, interaction))


_CLASSES = {}
_PREFIX = "Compressible"


def compressible(model_class):
    """``model_class`` with :class:`CompressibleMixin`, under the same ``__name__`` (cached; a model class that cannot
    take the switch is returned unchanged). It is found as ``recbole_compress.model.item_compression.Compressible<Name>``
    so that a config holding it pickles (RecBole's own checkpoints pickle the config)."""
    if refusal(model_class) or issubclass(model_class, CompressibleMixin):
        return model_class
    if model_class not in _CLASSES:
        qualname = f"{_PREFIX}{model_class.__name__}"
        cls = type(model_class.__name__, (CompressibleMixin, model_class), {
            "__module__": __name__, "__qualname__": qualname, "__doc__": model_class.__doc__,
            "compressed_from": model_class,
        })
        _CLASSES[model_class] = cls
        globals()[qualname] = cls
    return _CLASSES[model_class]


def __getattr__(name):
    """``Compressible<Name>`` of a RecBole or plugin sequential model, made on first use (unpickling in a new
    process)."""
    if not name.startswith(_PREFIX):
        raise AttributeError(name)
    base = name[len(_PREFIX):]
    import recbole.model.sequential_recommender as recbole_models

    model_class = getattr(recbole_models, base, None)
    if model_class is None:
        module = importlib.import_module(f"recbole_compress.model.sequential_recommender.{base.lower()}")
        model_class = getattr(module, base)
    return compressible(model_class)


def fit_item_codes(model, teacher_table, seed=0):
    """Codes and codebooks of a codebook-compressed ``model`` fitted to ``teacher_table`` (``n_items x D``, a trained
    model's item table on the same data), as EODRec's stage one and freeze do (:data:`CODE_FIT`, then
    :func:`~recbole_compress.model.layers.code_assignment.resolve_collisions`: items that share the encoder's code
    tuple would tie exactly at scoring, so all but the best-reconstructed item of each group move to the nearest free
    tuple). Returns the fit's summary with the statistics of the final codes and ``encoder_codes``, those of the
    encoder's codes before the repair."""
    from recbole_compress.model.layers.code_assignment import resolve_collisions
    from recbole_compress.model.layers.code_encoder import GumbelCodeEncoder, fit_codes

    block = model.item_embedding
    if not isinstance(block, CodebookEmbedding):
        raise ConfigError("fit_item_codes needs a model compressed with item_compression: codebook")
    if tuple(teacher_table.shape) != (block.num_embeddings, block.embedding_dim):
        raise ConfigError(f"codebook_teacher's item table is {tuple(teacher_table.shape)}; this model needs "
                          f"({block.num_embeddings}, {block.embedding_dim}): the same data and width")
    table = teacher_table.detach().to(block.codebooks.device)
    generator = torch.Generator().manual_seed(int(seed))
    encoder = GumbelCodeEncoder(block.embedding_dim, block.num_codebooks, block.codebook_size).to(table.device)
    summary = fit_codes(encoder, block, table[1:], CODE_FIT["steps"], CODE_FIT["lr"], CODE_FIT["tau"],
                        tau_start=CODE_FIT["tau_start"], batch_size=CODE_FIT["batch_size"], generator=generator)
    with torch.no_grad():
        codes = encoder.codes(table)
        summary["encoder_codes"] = code_statistics(codes, block.codebook_size)
        repaired, info = resolve_collisions(codes[1:], block.codebooks, table[1:], generator=generator)
        block.set_codes(torch.cat([codes[:1].cpu().long(), repaired]))
    summary.update(block.statistics(), moved=info["moved"], unresolved=info["unresolved"])
    return summary


def _blocks_problem(config, dataset):
    """The block settings against the catalogue. The table's width is the model's own, known once it is built (where
    a head wider than it is refused), so the head width given here stands in for it."""
    if config["item_compression"] != "adaptive":
        return None
    settings = {k: setting(config, k) for k in BLOCK_KEY_NAMES}
    dims = settings["cluster_dims"]
    head = dims[0] if isinstance(dims, (list, tuple)) and dims and isinstance(dims[0], int) else 8
    try:
        blocks_from_config(settings, dataset, max(head, 1))
    except ConfigError as e:
        return str(e)
    return None


#: Rules of the switch that need the catalogue (checked right after the dataset loads).
ITEM_COMPRESSION_DATA_RULES = (DataRule("item_compression", size_problem), DataRule("item_compression", _blocks_problem))
