"""The public look-up names where RecBole users expect them (``recbole.utils.get_model`` / ``get_trainer``).

The code lives in :mod:`recbole_compress.registry` (models and trainers) and :mod:`recbole_compress.errors`.
"""
from recbole_compress.errors import ConfigError, UnknownModelError
from recbole_compress.registry import (
    get_model,
    get_trainer,
    is_plugin_model,
    plugin_models,
    recbole_model_names,
    runnable_plugin_models,
)

__all__ = [
    "ConfigError", "UnknownModelError", "get_model", "get_trainer", "is_plugin_model", "plugin_models",
    "recbole_model_names", "runnable_plugin_models",
]
