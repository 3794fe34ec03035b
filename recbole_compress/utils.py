"""Model and trainer look-up: plugin models first, then RecBole's.

RecBole's own ``recbole.utils.get_model`` only knows ``recbole.model.*`` and, for an unknown name, ends in the import
error of its optional LightGBM/XGBoost wrappers. These versions resolve plugin models (with aliases, case-insensitive)
first, then RecBole's models (case-insensitive too), and raise one :class:`UnknownModelError` that lists what exists.
"""
import glob
import importlib
import inspect
import os
import pkgutil
import re
from functools import lru_cache

import yaml

from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

PLUGIN_MODEL_PACKAGES = ("recbole_compress.model.sequential_recommender",)

RECBOLE_MODEL_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)


class ConfigError(ValueError):
    """A configuration problem found before training starts (bad key, bad value, missing file or dataset)."""


class UnknownModelError(ConfigError):
    """The model name is neither a plugin model nor a RecBole model."""


def _normalise(name):
    return name.replace("-", "").replace("_", "").lower()


@lru_cache(maxsize=None)
def plugin_models():
    """All plugin model classes, by canonical class name (scans :data:`PLUGIN_MODEL_PACKAGES`)."""
    found = {}
    for package_name in PLUGIN_MODEL_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package_name}.{info.name}")
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if (
                    issubclass(obj, AbstractRecommender)
                    and obj.__module__ == module.__name__
                    and not inspect.isabstract(obj)
                    and not obj.__name__.startswith("_")
                ):
                    found[obj.__name__] = obj
    return found


@lru_cache(maxsize=None)
def _plugin_lookup():
    table = {}
    for name, cls in plugin_models().items():
        for alias in (name,) + tuple(getattr(cls, "aliases", ())):
            key = _normalise(alias)
            if key in table and table[key] is not cls:
                raise RuntimeError(f"model name {alias!r} is claimed by {table[key].__name__} and {name}")
            table[key] = cls
    return table


def runnable_plugin_models():
    """Names of the plugin models a user can run directly (teachers included, search supernets not)."""
    return sorted(n for n, c in plugin_models().items() if getattr(c, "runnable", True))


@lru_cache(maxsize=None)
def recbole_model_names():
    """Class names of RecBole's models (from its property files: one YAML per model)."""
    import recbole

    folder = os.path.join(os.path.dirname(recbole.__file__), "properties", "model")
    return sorted(
        os.path.splitext(os.path.basename(p))[0]
        for p in glob.glob(os.path.join(folder, "*.yaml"))
        if os.path.basename(p) not in ("lightgbm.yaml", "xgboost.yaml")
    )


def _get_recbole_model(model_name):
    wanted = model_name.lower()
    submodules = list(RECBOLE_MODEL_SUBMODULES)
    if wanted in ("lightgbm", "xgboost"):  # the only exlib models; importing exlib needs those libraries
        submodules.append("exlib_recommender")
    import torch

    for submodule in submodules:
        module_path = f"recbole.model.{submodule}.{wanted}"
        # importing any RecBole sequential model runs recbole/model/sequential_recommender/__init__.py, whose SINE
        # module calls torch.autograd.set_detect_anomaly(True) at import: every later backward pass of the process
        # would record stack traces (several times slower). Keep the process's anomaly setting as it was.
        anomaly = torch.is_anomaly_enabled()
        try:
            if importlib.util.find_spec(module_path) is None:
                continue
            module = importlib.import_module(module_path)
        except ImportError as e:
            raise UnknownModelError(f"model {model_name!r} needs a package that is not installed: {e}") from e
        finally:
            torch.autograd.set_detect_anomaly(anomaly)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__name__.lower() == wanted and issubclass(obj, AbstractRecommender):
                return obj
    return None


def get_model(model_name):
    """Model class by name: plugin models (and their aliases) first, then RecBole's; case-insensitive.

    Raises:
        UnknownModelError: the name is unknown; the message lists the plugin models.
    """
    if inspect.isclass(model_name):
        return model_name
    if not isinstance(model_name, str) or not model_name.strip():
        raise UnknownModelError(f"model must be a model name, got {model_name!r}")
    name = model_name.strip()
    cls = _plugin_lookup().get(_normalise(name))
    if cls is None:
        cls = _get_recbole_model(name)
    if cls is None:
        aliases = []
        for n in runnable_plugin_models():
            extra = tuple(getattr(plugin_models()[n], "aliases", ()))
            aliases.append(n + (f" ({', '.join(extra)})" if extra else ""))
        raise UnknownModelError(
            f"Unknown model {name!r}. Plugin models: {', '.join(aliases) or '(none)'}. "
            f"RecBole models work too, e.g. SASRec, NextItNet, GRU4Rec, BERT4Rec, FPMC "
            f"(all {len(recbole_model_names())}: python -c \"from recbole_compress.utils import recbole_model_names; "
            f"print(recbole_model_names())\")."
        )
    return cls


def is_plugin_model(model):
    cls = get_model(model)
    return plugin_models().get(cls.__name__) is cls


def _resolve_dotted(path):
    module_name, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def get_trainer(model_type, model_name):
    """Trainer class for a model: the plugin model's ``trainer_class``, else RecBole's choice.

    Every trainer returned here writes and reads checkpoints that load with ``torch.load(weights_only=True)``:
    RecBole's plain ``Trainer`` becomes :class:`recbole_compress.trainer.Trainer`, and RecBole's special trainers
    are given the same checkpoint handling through :func:`recbole_compress.trainer.safe_trainer`.
    """
    from recbole_compress.trainer import Trainer, safe_trainer

    cls = get_model(model_name)
    if is_plugin_model(cls):
        trainer = getattr(cls, "trainer_class", None) or Trainer
        if isinstance(trainer, str):
            trainer = _resolve_dotted(trainer)
        return safe_trainer(trainer)
    return safe_trainer(recbole_get_trainer(model_type or cls.type, cls.__name__))


# ----------------------------------------------------------------------------------------------------------------
# Known configuration keys, so that a --key=value RecBole would silently ignore is refused before training.
# ----------------------------------------------------------------------------------------------------------------

_CONFIG_KEY_RE = re.compile(r"""config\s*\[\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\]""")
_CONFIG_GET_RE = re.compile(r"""config\.get\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")

# Keys RecBole sets or reads that no YAML file lists.
_EXTRA_KEYS = {
    "model", "dataset", "config_files", "local_rank", "nproc", "world_size", "ip", "port", "offset", "device",
    "single_spec", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "valid_neg_sample_args", "test_neg_sample_args",
    "train_neg_sample_args", "reg_weight", "wandb_project", "log_wandb", "use_gpu", "gpu_id",
}


def _class_source_keys(klass):
    """Config keys read in the source file of ``klass``; none for classes without one (builtins such as object)."""
    try:
        path = inspect.getsourcefile(klass)
    except TypeError:
        return set()
    return _keys_in_source(path) if path else set()


def _keys_in_source(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return set()
    return set(_CONFIG_KEY_RE.findall(text)) | set(_CONFIG_GET_RE.findall(text))


def _keys_in_yaml(path):
    if not os.path.isfile(path):
        return set()
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return set(data) if isinstance(data, dict) else set()


@lru_cache(maxsize=None)
def run_config_keys():
    """Keys that describe the run rather than a model: RecBole's general, training, evaluation and dataset
    arguments and the keys of its overall, dataset and quick-start YAML files (plus the plugin's own)."""
    import recbole
    from recbole.utils import argument_list
    from recbole_compress import properties_path

    root = os.path.dirname(recbole.__file__)
    keys = set()
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, name))
    paths = [os.path.join(root, "properties", "overall.yaml"), properties_path("overall.yaml")]
    paths += glob.glob(os.path.join(root, "properties", "dataset", "*.yaml"))
    paths += glob.glob(os.path.join(root, "properties", "quick_start_config", "*.yaml"))
    paths += glob.glob(properties_path("dataset", "*.yaml"))
    for path in paths:
        if os.path.basename(path) not in ("url.yaml", "kg_url.yaml"):
            keys |= _keys_in_yaml(path)
    return frozenset(keys)


@lru_cache(maxsize=None)
def _generic_config_keys():
    import recbole
    from recbole.utils import argument_list
    from recbole_compress import properties_path

    root = os.path.dirname(recbole.__file__)
    keys = set(_EXTRA_KEYS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, name))
    for path in [os.path.join(root, "properties", "overall.yaml")] + glob.glob(
        os.path.join(root, "properties", "dataset", "*.yaml")
    ) + glob.glob(os.path.join(root, "properties", "quick_start_config", "*.yaml")):
        if os.path.basename(path) in ("url.yaml", "kg_url.yaml"):
            continue
        keys |= _keys_in_yaml(path)
    # keys read by RecBole's data pipeline, trainers, evaluator, samplers and configurator
    for sub in ("config", "data", "evaluator", "sampler", "trainer", "utils", "quick_start"):
        for path in glob.glob(os.path.join(root, sub, "**", "*.py"), recursive=True):
            keys |= _keys_in_source(path)
    for path in [os.path.join(root, "model", "abstract_recommender.py")]:
        keys |= _keys_in_source(path)
    for path in glob.glob(properties_path("**", "*.yaml"), recursive=True):
        if os.sep + "model" + os.sep not in path:
            keys |= _keys_in_yaml(path)
    here = os.path.dirname(os.path.abspath(__file__))
    for path in glob.glob(os.path.join(here, "*.py")) + glob.glob(os.path.join(here, "trainer", "*.py")):
        keys |= _keys_in_source(path)
    return frozenset(keys)


def known_config_keys(model, _seen=None):
    """Every configuration key the run of ``model`` can read: RecBole's generic keys, the model's YAML defaults
    (RecBole's and the plugin's), the keys its class hierarchy and trainer read from the config, and the prefixed
    keys of the other phases of its run: a model class declaring ``phase_models = {"teacher_": ("SASRec",)}`` reads
    ``teacher_<key>`` for every key a ``SASRec`` run reads (see :func:`recbole_compress.trainer.teacher.phase_config`),
    plus ``teacher_model`` and ``teacher_checkpoint``."""
    import recbole
    from recbole_compress import properties_path

    cls = get_model(model)
    keys = set(_generic_config_keys())
    keys |= _keys_in_yaml(os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{cls.__name__}.yaml"))
    keys |= _keys_in_yaml(properties_path("model", f"{cls.__name__}.yaml"))
    for klass in inspect.getmro(cls) + inspect.getmro(get_trainer(cls.type, cls)):
        keys |= _class_source_keys(klass)
    keys |= set(getattr(cls, "extra_config_keys", ()))
    seen = (_seen or set()) | {cls}
    for prefix, phase_models in (getattr(cls, "phase_models", None) or {}).items():
        keys |= {prefix + "model", prefix + "checkpoint"}
        for phase_model in phase_models:
            if get_model(phase_model) not in seen:
                keys |= {prefix + k for k in known_config_keys(phase_model, seen)}
    return keys


def unknown_config_keys(model, keys):
    """The keys among ``keys`` that no part of a ``model`` run reads."""
    known = known_config_keys(model)
    return sorted(k for k in keys if k not in known)


def closest_keys(key, candidates, n=3):
    import difflib

    return difflib.get_close_matches(key, sorted(candidates), n=n)


def model_type_of(model):
    cls = get_model(model)
    return getattr(cls, "type", ModelType.GENERAL)
