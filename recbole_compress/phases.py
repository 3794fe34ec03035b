"""The configuration of one phase of a run (a teacher trained first, AdaRec's search supernet).

One flat RecBole config cannot hold two models' settings, so a phase reads its own *prefixed* keys: in the
student's config, ``teacher_epochs: 20`` is the teacher phase's ``epochs``, ``teacher_hidden_size: 128`` its
``hidden_size``, ``teacher_model: SASRec`` its model, and so on (prefix ``teacher_``; AdaRec's search phase uses
``search_``). Everything else a phase sees is the run's generic configuration (dataset, split, evaluation
protocol, device, seed), never the student's hyperparameters, plus the phase model's own YAML defaults.
``<prefix>resume`` continues an interrupted phase from its last-epoch file (the run's own ``resume`` never reaches a
phase).

A model declares its phases with :class:`recbole_compress.config_keys.Phase` (class attribute ``phases``).
"""
import os

from recbole_compress import properties_path
from recbole_compress.config import Config
from recbole_compress.config_keys import Phase
from recbole_compress.recbole_keys import general_keys, recbole_model_defaults
from recbole_compress.registry import get_model

# keys Config computes itself, or that describe the process rather than the run: never copied into a phase config
_COMPUTED_KEYS = {
    "model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank",
    "valid_neg_sample_args", "test_neg_sample_args", "train_neg_sample_args", "data_path", "world_size", "nproc",
    "ip", "port", "offset", "valid_metric_bigger", "config_files",
    "resume",  # a run's resume checkpoint is its own model's, never a phase's
}
PROCESS_KEYS = ("device", "single_spec", "local_rank", "world_size", "nproc", "ip", "port", "offset")


def model_default_keys(model):
    """Keys of ``model``'s own YAML defaults (RecBole's and the plugin's property files)."""
    import yaml

    name = model.__name__ if isinstance(model, type) else get_model(model).__name__
    keys = set(recbole_model_defaults(name))
    path = properties_path("model", f"{name}.yaml")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            keys |= set(yaml.safe_load(f) or {})
    return keys


def phases_of(model):
    """The phases a model declares (:class:`~recbole_compress.config_keys.Phase`), in order; a subclass's
    ``phases`` replaces its base class's."""
    return tuple(getattr(get_model(model), "phases", ()) or ())


def phase_overrides(config, phase):
    """The settings a phase of ``config``'s run gets over its model's defaults: the run's generic keys (minus
    student hyperparameters that only the student's YAML sets), the keys the phase inherits from the run, and every
    ``<prefix>key`` that is set (not None) as ``key``."""
    generic = general_keys()
    final = config.final_config_dict
    # a generic key (epochs, learning_rate, ...) that only the student's own model YAML sets is a student
    # hyperparameter: the phase takes its model's default instead; set on the command line, in config files or in
    # config_dict, it holds for every phase (unless the phase's prefixed key overrides it)
    external = getattr(config, "external_config_dict", None) or {}
    student = getattr(config, "model_class", None) or config["model"]
    student_defaults = model_default_keys(student)
    overrides = {
        k: v
        for k, v in final.items()
        if k in generic and k not in _COMPUTED_KEYS and (k not in student_defaults or k in external)
    }
    prefix = phase.prefix
    for key in phase.inherit:
        overrides[key] = final[key]
    for key, value in final.items():
        if value is not None and key.startswith(prefix) and key[len(prefix):] not in ("", "model", "checkpoint"):
            overrides[key[len(prefix):]] = value
    if final["dataset"] != "ml-100k":
        overrides["data_path"] = os.path.dirname(os.path.normpath(final["data_path"]))
    return overrides


def find_phase(model, prefix):
    """The phase of ``model`` with ``prefix``; a phase without a declaration (a plain prefix) inherits nothing."""
    for phase in phases_of(model):
        if phase.prefix == prefix:
            return phase
    return Phase(prefix, None)


def phase_config(config, phase, model=None, extra=None):
    """The configuration of one phase of ``config``'s run (``phase``: a :class:`Phase` or its prefix), for ``model``
    (default: the phase's model in ``config``).

    It holds the run's generic keys (dataset, split, protocol, training loop, seed), then ``model``'s own YAML
    defaults, then the keys the phase inherits, every ``<prefix>key`` of ``config`` as ``key``, then ``extra``.
    Process keys (device, DDP rank) are copied as they are, without initialising anything again.
    """
    if isinstance(phase, str):
        phase = find_phase(getattr(config, "model_class", None) or config["model"], phase)
    model = model or phase.model_of(config)
    overrides = phase_overrides(config, phase)
    overrides.update(extra or {})
    final = config.final_config_dict
    phase = Config(model=get_model(model), dataset=final["dataset"], config_dict=overrides, read_cmd_line=False)
    for key in PROCESS_KEYS:
        if key in final:
            phase[key] = final[key]
    return phase
