"""Model and trainer look-up: plugin models first, then RecBole's; which trainer each plugin model needs.

RecBole's own ``recbole.utils.get_model`` only knows ``recbole.model.*`` and, for an unknown name, ends in the import
error of its optional LightGBM/XGBoost wrappers. These versions resolve plugin models (with aliases, case-insensitive)
first, then RecBole's models (case-insensitive too), and raise one :class:`UnknownModelError` that lists what exists
and suggests the closest names.

Plugin models never import trainers: the table :data:`PLUGIN_TRAINERS` here says which trainer a model needs (the
plugin's :class:`~recbole_compress.trainer.base.Trainer` when it is not listed).
"""
import difflib
import glob
import importlib
import inspect
import os
import pkgutil
from functools import lru_cache

from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_compress.errors import UnknownModelError
from recbole_compress.model.item_compression import compressible
from recbole_compress.trainer.adarec import AdaRecSearchTrainer, AdaRecTrainer, StepLRTrainer
from recbole_compress.trainer.base import Trainer, safe_trainer
from recbole_compress.trainer.eodrec import EODRecTrainer

PLUGIN_MODEL_PACKAGES = ("recbole_compress.model.sequential_recommender",)

RECBOLE_MODEL_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)

#: The trainer of every plugin model that needs more than the plugin's Trainer (teacher phases, two stages, search).
PLUGIN_TRAINERS = {
    "EODRec": EODRecTrainer,
    "AdaRec": AdaRecTrainer,
    "AdaRecSearch": AdaRecSearchTrainer,
    "AdaRecNextItNetTeacher": StepLRTrainer,
    "AdaRecSASRecTeacher": StepLRTrainer,
}


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


def closest_model_names(name, n=3):
    """Plugin names (and aliases) and RecBole model names closest to ``name``, for a "did you mean"."""
    names = {}
    for canonical, cls in plugin_models().items():
        if getattr(cls, "runnable", True):
            for alias in (canonical,) + tuple(getattr(cls, "aliases", ())):
                names[_normalise(alias)] = alias
    for canonical in recbole_model_names():
        names.setdefault(_normalise(canonical), canonical)
    close = difflib.get_close_matches(_normalise(name), list(names), n=n, cutoff=0.6)
    return [names[c] for c in close]


def get_model(model_name):
    """Model class by name: plugin models (and their aliases) first, then RecBole's; case-insensitive. A sequential
    model comes as :func:`recbole_compress.model.item_compression.compressible` (its own class, under its own name,
    whose constructor compresses the item table when the config sets ``item_compression``).

    Raises:
        UnknownModelError: the name is unknown; the message suggests the closest names and lists the plugin models.
    """
    if inspect.isclass(model_name):
        return compressible(model_name)
    if not isinstance(model_name, str) or not model_name.strip():
        raise UnknownModelError(f"model must be a model name, got {model_name!r}")
    name = model_name.strip()
    cls = _plugin_lookup().get(_normalise(name))
    if cls is None:
        cls = _get_recbole_model(name)
    if cls is None:
        close = closest_model_names(name)
        aliases = []
        for n in runnable_plugin_models():
            extra = tuple(getattr(plugin_models()[n], "aliases", ()))
            aliases.append(n + (f" ({', '.join(extra)})" if extra else ""))
        raise UnknownModelError(
            f"Unknown model {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "") + ". "
            f"Plugin models: {', '.join(aliases) or '(none)'}. "
            f"RecBole models work too, e.g. SASRec, NextItNet, GRU4Rec, BERT4Rec, FPMC "
            f"(all {len(recbole_model_names())}: python -c \"from recbole_compress.utils import recbole_model_names; "
            f"print(recbole_model_names())\")."
        )
    return compressible(cls)


def is_plugin_model(model):
    cls = get_model(model)
    cls = getattr(cls, "compressed_from", cls)
    return plugin_models().get(cls.__name__) is cls


def get_trainer(model_type, model_name):
    """Trainer class for a model: the plugin model's trainer (:data:`PLUGIN_TRAINERS`), else RecBole's choice.

    Every trainer returned here writes and reads checkpoints that load with ``torch.load(weights_only=True)``:
    RecBole's plain ``Trainer`` becomes :class:`recbole_compress.trainer.Trainer`, and RecBole's special trainers
    are given the same checkpoint handling through :func:`recbole_compress.trainer.safe_trainer`.
    """
    cls = get_model(model_name)
    if is_plugin_model(cls):
        return safe_trainer(PLUGIN_TRAINERS.get(cls.__name__, Trainer))
    return safe_trainer(recbole_get_trainer(model_type or cls.type, cls.__name__))
