"""What RecBole itself reads: its general keys and their value rules, and the keys of each RecBole model.

RecBole lists its general keys in ``recbole.utils.argument_list`` and its defaults in its YAML property files; a
RecBole model's keys are those of its own ``properties/model/<Model>.yaml``, and the type of each default is the type
the model expects. Nothing here scans source code.
"""
import glob
import os
from functools import lru_cache

import yaml

from recbole_compress import properties_path
from recbole_compress.config_keys import Key, Relation

#: Keys RecBole computes or reads that none of its YAML files or argument lists name (set by its Config, its
#: quick start or its DDP launcher, or read by its special trainers).
RECBOLE_UNLISTED_KEYS = frozenset({
    "model", "dataset", "config_files", "local_rank", "nproc", "world_size", "ip", "port", "offset", "device",
    "single_spec", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "valid_neg_sample_args", "test_neg_sample_args",
    "train_neg_sample_args", "use_gpu", "gpu_id", "wandb_project", "log_wandb", "valid_metric_bigger",
    # read by RecBole's pre-training trainers and a few models without a YAML entry
    "pretrain_epochs", "save_step", "train_rec_step", "train_kg_step", "warm_up_step",
})

LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")

#: RecBole's general keys that a bad value breaks in ways that do not name the key (checked before any work).
GENERAL_KEYS = (
    Key("epochs", int, low=1),
    Key("train_batch_size", int, low=1),
    Key("eval_batch_size", int, low=1),
    Key("learning_rate", float, low=0, low_open=True),
    Key("weight_decay", float, low=0),
    Key("stopping_step", int, low=1),
    Key("eval_step", int, low=0),
    Key("MAX_ITEM_LIST_LENGTH", int, low=1),
    Key("seed", int),
    Key("reproducibility", bool),
    Key("show_progress", bool),
    Key("use_gpu", bool),
    Key("learner", str),
    Key("valid_metric", str),
    Key("valid_metric_bigger", bool),
    Key("loss_decimal_place", int, low=0),
    Key("metric_decimal_place", int, low=0),
    Key("worker", int, low=0),
    Key("clip_grad_norm", dict, none_ok=True),
    Key("checkpoint_dir", str),
    Key("strict_config_keys", bool),
)


def _metric_names(config):
    metrics = config["metrics"]
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
    return [str(m).lower() for m in metrics]


def _topks(config):
    topk = config["topk"]
    return [topk] if isinstance(topk, int) else list(topk or [])


def _valid_metric_ok(config):
    name, _, k = str(config["valid_metric"]).lower().partition("@")
    if name not in _metric_names(config):
        return False
    return not k or (k.isdigit() and int(k) in _topks(config))


def _known_metrics():
    from recbole.evaluator.register import metrics_dict

    return sorted(metrics_dict)


GENERAL_RELATIONS = (
    Relation(("learner",), lambda c: c["learner"].lower() in LEARNERS, f"learner must be one of {', '.join(LEARNERS)}"),
    Relation(("metrics",), lambda c: all(m in _known_metrics() for m in _metric_names(c)),
             "every metric must be one of RecBole's: " + ", ".join(_known_metrics())),
    Relation(("topk",), lambda c: all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in _topks(c)),
             "topk must be an integer >= 1 or a list of them"),
    Relation(("valid_metric", "metrics", "topk"), _valid_metric_ok,
             "valid_metric must be one of the configured metrics at a configured top-k, e.g. NDCG@10 with metrics "
             "containing NDCG and topk containing 10"),
)

#: Keys of RecBole models whose value must be a positive integer (where a model reads them).
POSITIVE_SIZE_KEYS = ("hidden_size", "inner_size", "embedding_size", "n_layers", "n_heads", "num_layers",
                      "block_num", "kernel_size")
#: Dropout probabilities of RecBole models: in [0, 1).
DROPOUT_KEYS = ("hidden_dropout_prob", "attn_dropout_prob", "dropout_prob")


@lru_cache(maxsize=None)
def _yaml_loader():
    """RecBole's YAML loader (it reads ``1e-12`` as a float, as RecBole's Config does)."""
    from recbole.config import Config

    return Config._build_yaml_loader(None)


def _read_yaml(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f.read(), Loader=_yaml_loader())
    return data if isinstance(data, dict) else {}


def _recbole_root():
    import recbole

    return os.path.dirname(recbole.__file__)


@lru_cache(maxsize=None)
def general_keys():
    """RecBole's general, training, evaluation and dataset keys: its argument lists, the keys of its overall,
    dataset and quick-start YAML files, the plugin's own overall keys, and :data:`RECBOLE_UNLISTED_KEYS`."""
    from recbole.utils import argument_list

    root = _recbole_root()
    keys = set(RECBOLE_UNLISTED_KEYS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, name))
    paths = [os.path.join(root, "properties", "overall.yaml"), properties_path("overall.yaml")]
    paths += glob.glob(os.path.join(root, "properties", "dataset", "*.yaml"))
    paths += glob.glob(os.path.join(root, "properties", "quick_start_config", "*.yaml"))
    paths += glob.glob(properties_path("dataset", "*.yaml"))
    paths += glob.glob(properties_path("quick_start_config", "*.yaml"))
    for path in paths:
        if os.path.basename(path) not in ("url.yaml", "kg_url.yaml"):
            keys |= set(_read_yaml(path))
    return frozenset(keys)


def recbole_model_defaults(model_name):
    """The defaults of a RecBole model, from RecBole's ``properties/model/<Model>.yaml`` ({} for none)."""
    return _read_yaml(os.path.join(_recbole_root(), "properties", "model", f"{model_name}.yaml"))


def _kind_of(default):
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, (list, tuple)):
        return list
    return None


def recbole_model_keys(model_name):
    """:class:`Key` rules of a RecBole model: the type of each YAML default, sizes >= 1, dropouts in [0, 1)."""
    keys = []
    for name, default in recbole_model_defaults(model_name).items():
        kind = _kind_of(default)
        if name in POSITIVE_SIZE_KEYS and kind is int:
            keys.append(Key(name, int, low=1))
        elif name in DROPOUT_KEYS and kind in (int, float):
            keys.append(Key(name, float, low=0, high=1, high_open=True))
        elif kind is float:
            keys.append(Key(name, float))
        else:
            keys.append(Key(name, kind, none_ok=default is None))
    return tuple(keys)


def recbole_model_relations(model_name):
    """Relations a RecBole model needs: ``hidden_size % n_heads == 0`` for its multi-head attention models."""
    defaults = recbole_model_defaults(model_name)
    if "hidden_size" in defaults and "n_heads" in defaults:
        return (Relation(("hidden_size", "n_heads"), lambda c: c["hidden_size"] % c["n_heads"] == 0,
                         "hidden_size must be a multiple of n_heads (multi-head attention splits it)"),)
    return ()
