"""Every check a run can make before any work: key names, values, files, checkpoints, phases; then the data rules.

:func:`check_config` runs right after the configuration is built, before any dataset loads: a run (and every model of
a multi-model run) is refused with one :class:`~recbole_compress.errors.ConfigError` that names each bad key, its
value and what is allowed. :func:`check_data` runs right after the dataset loads, before any model is built or
trained, for the rules that need the data (e.g. a compression rate against the catalogue size).

A run knows exactly the keys of RecBole (:func:`recbole_compress.recbole_keys.general_keys`), of its model (declared
``config_keys`` and YAML defaults for a plugin model, RecBole's YAML for a RecBole model), of its trainer, and of
its phases (``<prefix><key>`` for every key of the phase's model).
"""
import difflib
import os
from logging import getLogger

from recbole_compress.checkpoint import load_checkpoint
from recbole_compress.config_keys import declared, value_problems
from recbole_compress.data.atomic_files import inter_file_problems
from recbole_compress.errors import CheckpointError, ConfigError
from recbole_compress.model.item_compression import (
    ITEM_COMPRESSION_DATA_RULES,
    ITEM_COMPRESSION_KEYS,
    ITEM_COMPRESSION_RELATIONS,
    refusal,
)
from recbole_compress.phases import model_default_keys, phase_config, phases_of
from recbole_compress.recbole_keys import (
    GENERAL_KEYS,
    GENERAL_RELATIONS,
    general_keys,
    recbole_model_keys,
    recbole_model_relations,
)
from recbole_compress.registry import get_model, get_trainer, is_plugin_model


def _trainer_of(model_class):
    return get_trainer(model_class.type, model_class)


def run_keys(model, phase_models=None, _seen=()):
    """Every key a run of ``model`` reads: RecBole's general keys, the model's and its trainer's keys, and the
    prefixed keys of its phases (``phase_models`` maps a phase prefix to the model chosen for it; default: the
    phase's default model)."""
    cls = get_model(model)
    keys = set(general_keys()) | model_default_keys(cls) | {"item_compression"}
    for owner in (cls, _trainer_of(cls)):
        keys |= {k.name for k in declared(owner, "config_keys")}
    if refusal(cls) is None:
        keys |= {k.name for k in ITEM_COMPRESSION_KEYS}
    seen = set(_seen) | {cls}
    for phase in phases_of(cls):
        keys |= {phase.prefix + "model", phase.prefix + "checkpoint"}
        chosen = get_model((phase_models or {}).get(phase.prefix) or phase.default_model)
        if chosen not in seen:
            keys |= {phase.prefix + k for k in run_keys(chosen, None, seen)}
    return frozenset(keys)


def rules_of(model):
    """``(keys, relations)``: the value rules of a run of ``model`` (RecBole's general rules, then the model's and
    its trainer's declared rules, or a RecBole model's rules from its YAML defaults)."""
    cls = get_model(model)
    keys, relations = list(GENERAL_KEYS), list(GENERAL_RELATIONS)
    if is_plugin_model(cls) or declared(cls, "config_keys"):
        for owner in (cls, _trainer_of(cls)):
            keys += declared(owner, "config_keys")
            relations += declared(owner, "config_relations")
    else:
        keys += recbole_model_keys(cls.__name__)
        relations += recbole_model_relations(cls.__name__)
    if refusal(cls) is None:
        names = {k.name for k in keys}
        keys += [k for k in ITEM_COMPRESSION_KEYS if k.name not in names]
        relations += ITEM_COMPRESSION_RELATIONS
    return keys, relations


def closest_keys(key, candidates, n=3):
    """The names among ``candidates`` closest to ``key``, for a "did you mean"."""
    return difflib.get_close_matches(key, sorted(candidates), n=n)


def _phase_models(config):
    chosen = {}
    for phase in phases_of(config["model"]):
        if phase.configurable and config[phase.prefix + "model"]:
            chosen[phase.prefix] = config[phase.prefix + "model"]
    return chosen


def unknown_key_problems(config, also_known=()):
    """Messages for the user-set keys (command line, config files, config_dict) that no part of the run reads."""
    known = run_keys(config["model"], _phase_models(config)) | set(also_known)
    problems = []
    for key, source in sorted(config.key_sources().items()):
        if key in known:
            continue
        close = closest_keys(key, known)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        problems.append(f"{key} ({source}) is not read by any part of a {config['model']} run{hint}")
    return problems


def check_key_names(config, also_known=()):
    """Refuse (or, with ``strict_config_keys: False``, only warn about) keys no part of the run reads."""
    problems = unknown_key_problems(config, also_known)
    if not problems:
        return
    message = "unknown configuration key(s): " + "; ".join(problems) + ". RecBole would silently ignore them."
    if config["strict_config_keys"] is False:
        getLogger().warning(message)
        return
    raise ConfigError(message + " Set strict_config_keys: False to only warn.")


def value_problems_of(config, names=None):
    """Messages for every value of ``config`` that breaks a rule of its run (only keys in ``names``, if given)."""
    keys, relations = rules_of(config["model"])
    if names is not None:
        keys = [k for k in keys if k.name in names]
        relations = [r for r in relations if set(r.keys) <= set(names)]
    return value_problems(config, keys, relations, config.key_sources())


def _checkpoint_problem(path, models, key):
    """A message if ``path`` is not a plugin checkpoint of one of ``models`` (None: any model), else None."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        return f"{key}={path!r}: {e}"
    held = str((checkpoint.get("config") or {}).get("model"))
    if models is not None and held.lower() not in {m.lower() for m in models}:
        return f"{key}={path!r}: holds a {held} model, not {' or '.join(models)}"
    return None


def checkpoint_problems(config):
    """Messages for declared checkpoint keys that do not name a usable plugin checkpoint of the right model."""
    keys, _ = rules_of(config["model"])
    wanted = [(key.name, key.checkpoint_of) for key in keys if key.checkpoint_of is not None]
    wanted.append(("resume", (config["model"],)))  # a run resumes from a checkpoint of its own model
    if config["item_compression"] == "codebook":
        wanted.append(("codebook_teacher", None))  # any trained model of the same width on the same data
    problems = []
    for name, models in wanted:
        if config[name]:
            problem = _checkpoint_problem(config[name], models, name)
            if problem:
                problems.append(problem)
    return problems


def phase_problems(config):
    """Messages for the phases of the run: the phase model, its checkpoint, and the phase's own values and the keys
    it must share with the run (checked on the phase's configuration, before the phase trains)."""
    problems = []
    for phase in phases_of(config["model"]):
        model = phase.model_of(config)
        where = f"{phase.name} phase ({model})"
        try:
            cls = get_model(model)
        except ConfigError as e:
            problems.append(f"{phase.prefix}model={model!r}: {e}")
            continue
        if phase.models is not None and cls.__name__ not in phase.models:
            problems.append(f"{phase.prefix}model={model!r}: must be one of {', '.join(phase.models)}")
            continue
        resume = config[phase.prefix + "resume"]  # continues the phase: a checkpoint of the phase's own model
        problem = resume and _checkpoint_problem(resume, (cls.__name__,), phase.prefix + "resume")
        if problem:
            problems.append(problem)
        path = config[phase.prefix + "checkpoint"]
        if resume and path:
            problems.append(f"{phase.prefix}resume={resume!r} continues the {phase.name} phase's training and "
                            f"{phase.prefix}checkpoint={path!r} skips it with a trained model: set only one")
        if path:
            problem = _checkpoint_problem(path, phase.models, phase.prefix + "checkpoint")
            if problem:
                problems.append(problem)
            continue
        phase_cfg = phase_config(config, phase, cls)
        problems += [f"{where}: {p}" for p in value_problems_of(phase_cfg)]
        for key in phase.match:
            if phase_cfg[key] != config[key]:
                problems.append(
                    f"{phase.prefix}{key}={phase_cfg[key]!r} (the {where}'s {key}) must equal {key}={config[key]!r}: "
                    f"set {phase.prefix}{key} to {config[key]!r} or leave it unset"
                )
    return problems


def dataset_file_problem(config):
    """A message if the dataset's atomic files are missing (RecBole would otherwise try to download the dataset,
    which fails offline with a confusing error) or cannot be used (a missing or unloaded column, an unparsable value:
    :func:`recbole_compress.data.atomic_files.inter_file_problems`), else None. RecBole's bundled ml-100k is always
    there."""
    dataset = config["dataset"]
    if dataset == "ml-100k":
        return None
    path = config["data_path"]
    if config["benchmark_filename"]:
        wanted = [os.path.join(path, f"{dataset}.{part}.inter") for part in config["benchmark_filename"]]
    else:
        wanted = [os.path.join(path, f"{dataset}.inter")]
    missing = [f for f in wanted if not os.path.isfile(f)]
    if not missing:
        problems = [p for f in wanted for p in inter_file_problems(f, config)]
        return "\n  ".join(problems) if problems else None
    parent = os.path.dirname(os.path.normpath(path))
    url = recbole_catalogue().get(dataset)
    if url and config["download"]:
        return _reachable_problem(url, dataset)
    hint = (f" {dataset!r} is in RecBole's catalogue: --download=True lets RecBole download it ({url}; needs "
            f"internet)." if url else "")
    return (
        f"dataset {dataset!r} not found: {', '.join(missing)} does not exist. Put its RecBole atomic files in "
        f"<data_path>/{dataset}/ and set data_path (now {parent!r}), e.g. --data_path=/path/to/datasets, or make them "
        f"from a CSV with python -m recbole_compress.data.atomic_files.{hint} RecBole's bundled ml-100k needs no "
        f"data_path."
    )


def recbole_catalogue():
    """``{dataset name: download address}`` of RecBole's catalogue (its ``properties/dataset/url.yaml``)."""
    import recbole
    import yaml

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset", "url.yaml")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _reachable_problem(url, dataset, timeout=10):
    """None if RecBole's download address answers within ``timeout`` seconds, else a message (offline)."""
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return None
    except Exception as e:
        return (f"dataset {dataset!r} is not here and RecBole's download address {url} cannot be reached "
                f"({type(e).__name__}: {e}); are you offline? Put its atomic files in data_path instead.")


def compression_problems(config):
    """A message when ``item_compression`` is set for a model that cannot take it, naming the reason."""
    reason = refusal(get_model(config["model"]))
    if config["item_compression"] and reason:
        return [f"item_compression={config['item_compression']!r} cannot apply to {config['model']}: {reason}"]
    return []


def check_config(config, also_known=()):
    """All checks that need no data: key names, values, checkpoints, phases, dataset files.

    Raises:
        ConfigError: one message listing every problem (key, value, what is allowed).
    """
    problems = compression_problems(config)
    if problems:
        raise ConfigError(problem_message(problems))
    check_key_names(config, also_known)
    problems = value_problems_of(config)
    problems += checkpoint_problems(config)
    problems += phase_problems(config)
    missing = dataset_file_problem(config)
    if missing:
        problems.append(missing)
    if problems:
        raise ConfigError(problem_message(problems))


def problem_message(problems, where=""):
    """One problem as one line; several as a count and one line each."""
    if len(problems) == 1:
        return f"{where}{problems[0]}"
    return "\n  ".join([f"{len(problems)} configuration problems{where and ' ' + where.rstrip(': ')}:"] + problems)


def check_data(config, dataset):
    """The model's data rules (:class:`~recbole_compress.config_keys.DataRule`), right after the dataset loads.

    Raises:
        ConfigError: a value that does not fit this dataset; warnings are logged.
    """
    problems = []
    rules = list(declared(get_model(config["model"]), "data_rules"))
    rules += declared(_trainer_of(get_model(config["model"])), "data_rules")
    if config["item_compression"]:
        rules += ITEM_COMPRESSION_DATA_RULES
    for rule in rules:
        outcome = rule.check(config, dataset)
        if isinstance(outcome, tuple) and outcome and outcome[0] == "warning":
            getLogger().warning(f"{rule.key}={config[rule.key]!r}: {outcome[1]}")
        elif outcome:
            problems.append(f"{rule.key}={config[rule.key]!r}: {outcome}")
    if problems:
        raise ConfigError(problem_message(problems, f"with dataset {config['dataset']!r}: "))



def has_data_rules(config):
    cls = get_model(config["model"])
    return bool(declared(cls, "data_rules") or declared(_trainer_of(cls), "data_rules") or config["item_compression"])


def check_data_rules_early(config):
    """For a model with data rules: load its dataset now and check them (a multi-model run does this for every
    model before the first one trains). A model without data rules loads nothing here."""
    if not has_data_rules(config):
        return
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    check_data(config, create_dataset(config))
