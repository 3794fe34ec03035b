"""Phases of a teacher-student run (EODRec, AdaRec): train the teacher first, or load and check a given one.

One flat RecBole config cannot hold two models' settings, so a phase reads its own *prefixed* keys: in the
student's config, ``teacher_epochs: 20`` is the teacher phase's ``epochs``, ``teacher_hidden_size: 128`` its
``hidden_size``, ``teacher_model: SASRec`` its model, and so on (prefix ``teacher_``; AdaRec's search phase uses
``search_``). Everything else a phase sees is the run's generic configuration (dataset, split, evaluation
protocol, device, seed), never the student's hyperparameters, plus the phase model's own YAML defaults.

``teacher_checkpoint`` (a plugin checkpoint file) skips the teacher phase: the file is checked against the run's
item-id mapping (a teacher trained on other data is refused) and its model rebuilt from the file's own config.
"""
import os
import time
from functools import lru_cache
from logging import getLogger

from recbole.utils import init_seed, set_color

from recbole_compress.trainer.base import Trainer
from recbole_compress.trainer.checkpoint import (
    CheckpointError,
    check_item_mapping,
    config_from_plain,
    load_checkpoint,
)

# keys Config computes itself, or that describe the process rather than the run: never copied into a phase config
_COMPUTED_KEYS = {
    "model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank",
    "valid_neg_sample_args", "test_neg_sample_args", "train_neg_sample_args", "data_path", "world_size", "nproc",
    "ip", "port", "offset", "valid_metric_bigger", "config_files",
}
_PROCESS_KEYS = ("device", "single_spec", "local_rank", "world_size", "nproc", "ip", "port", "offset")


def _run_keys():
    from recbole_compress.utils import run_config_keys

    return run_config_keys()


def phase_config(config, prefix, model):
    """The configuration of one phase of ``config``'s run, for ``model``.

    It holds the run's generic keys (dataset, split, protocol, training loop, seed), then ``model``'s own YAML
    defaults, then every ``<prefix>key`` of ``config`` as ``key``. Process keys (device, DDP rank) are copied as they
    are, without initialising anything again.
    """
    from recbole_compress.config import Config
    from recbole_compress.utils import get_model

    model_class = get_model(model)
    generic = _run_keys()
    final = config.final_config_dict
    # a generic key (epochs, learning_rate, ...) that only the student's own model YAML sets is a student
    # hyperparameter: the phase takes its model's default instead; set on the command line, in config files or in
    # config_dict, it holds for every phase (unless the phase's prefixed key overrides it)
    external = getattr(config, "external_config_dict", None)
    student = getattr(config, "model_class", None) or config["model"]
    student_defaults = _model_yaml_keys(student) if external is not None else set()
    overrides = {
        k: v
        for k, v in final.items()
        if k in generic and k not in _COMPUTED_KEYS and (k not in student_defaults or k in external)
    }
    for key, value in final.items():
        if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix):] not in ("model", "checkpoint"):
            overrides[key[len(prefix):]] = value
    if final["dataset"] != "ml-100k":
        overrides["data_path"] = os.path.dirname(os.path.normpath(final["data_path"]))
    phase = Config(model=model_class, dataset=final["dataset"], config_dict=overrides, read_cmd_line=False)
    for key in _PROCESS_KEYS:
        if key in final:
            phase[key] = final[key]
    return phase


@lru_cache(maxsize=None)
def phase_config_keys(prefix, default_model):
    """Every ``<prefix>key`` a phase can read: ``prefix`` + each key known to ``default_model``'s run (generic keys,
    its YAML and source) or found in any RecBole model's YAML (for another ``<prefix>model``), plus
    ``<prefix>model`` and ``<prefix>checkpoint``. A student exposes them as its ``extra_config_keys`` so that
    ``--teacher_epochs=5`` is accepted on the command line."""
    import glob

    import recbole

    from recbole_compress.utils import _keys_in_yaml, known_config_keys

    keys = set(known_config_keys(default_model))
    for path in glob.glob(os.path.join(os.path.dirname(recbole.__file__), "properties", "model", "*.yaml")):
        keys |= _keys_in_yaml(path)
    return frozenset({prefix + k for k in keys} | {prefix + "model", prefix + "checkpoint"})


class PhaseConfigKeys:
    """Class attribute ``extra_config_keys = PhaseConfigKeys("teacher_")`` of a student model: the prefixed keys of
    its teacher phase (:func:`phase_config_keys` of its ``default_teacher_model``), computed when first read."""

    def __init__(self, prefix="teacher_"):
        self.prefix = prefix

    def __get__(self, obj, cls):
        return phase_config_keys(self.prefix, getattr(cls, "default_teacher_model", None) or "SASRec")


def _model_yaml_keys(model):
    """Keys of ``model``'s own YAML defaults (RecBole's and the plugin's property files)."""
    import recbole

    from recbole_compress import properties_path
    from recbole_compress.utils import _keys_in_yaml, get_model

    name = model.__name__ if isinstance(model, type) else get_model(model).__name__
    return _keys_in_yaml(os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{name}.yaml")) | (
        _keys_in_yaml(properties_path("model", f"{name}.yaml"))
    )


def phase_train_data(phase, train_data):
    """``train_data``, or the same training split batched by the phase's own ``train_batch_size`` when it differs
    (a phase's ``<prefix>train_batch_size`` is honoured)."""
    if phase["train_batch_size"] == train_data.config["train_batch_size"]:
        return train_data
    from recbole.data.utils import get_dataloader

    return get_dataloader(phase, "train")(phase, train_data._dataset, train_data._sampler, shuffle=phase["shuffle"])


def load_teacher(path, dataset, device=None):
    """Rebuild the model saved in the plugin checkpoint ``path`` and check it fits ``dataset``'s item ids.

    Raises:
        CheckpointError: unsafe/unknown file, another dataset's item mapping, or weights that do not fit the model.
    """
    from recbole_compress.utils import get_model

    checkpoint = load_checkpoint(path, map_location="cpu")
    check_item_mapping(checkpoint, dataset, f"teacher checkpoint {path!r}")
    config = config_from_plain(checkpoint["config"])
    if device is not None:
        config["device"] = device
    model = get_model(config["model"])(config, dataset)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"teacher checkpoint {path!r} does not fit a {config['model']} model: {e}") from None
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return model.to(config["device"]), config


def train_or_load_teacher(config, train_data, valid_data, default_model, prefix="teacher_", verbose=True):
    """The teacher of a teacher-student run: loaded from ``<prefix>checkpoint`` if set, else trained now.

    Args:
        config: the student's run configuration.
        train_data, valid_data: the run's data loaders (the teacher sees exactly the student's split).
        default_model (str): teacher model when ``<prefix>model`` is not set.

    Returns:
        (teacher model in eval mode, info dict with ``checkpoint``, ``trained``, ``best_valid_score``,
        ``best_valid_result``, ``model``).
    """
    logger = getLogger()
    path = config[f"{prefix}checkpoint"]
    if path:
        teacher, teacher_config = load_teacher(path, train_data._dataset, device=config["device"])
        logger.info(set_color(f"Phase {prefix.rstrip('_')}", "green") + f": reusing {teacher_config['model']} from {path}")
        teacher.eval()
        return teacher, {"checkpoint": path, "trained": False, "model": teacher_config["model"],
                         "best_valid_score": None, "best_valid_result": None}

    from recbole_compress.utils import get_model, get_trainer

    model_name = config[f"{prefix}model"] or default_model
    teacher_config = phase_config(config, prefix, model_name)
    logger.info(
        set_color(f"Phase {prefix.rstrip('_')}", "green")
        + f": training {teacher_config['model']} for up to {teacher_config['epochs']} epochs"
    )
    init_seed(teacher_config["seed"] + teacher_config["local_rank"], teacher_config["reproducibility"])
    teacher = get_model(teacher_config["model"])(teacher_config, train_data._dataset).to(teacher_config["device"])
    trainer = get_trainer(teacher_config["MODEL_TYPE"], teacher_config["model"])(teacher_config, teacher)
    epoch_times = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        out = train_epoch(*args, **kwargs)
        epoch_times.append(time.perf_counter() - start)
        return out

    trainer._train_epoch = timed_train_epoch
    best_score, best_result = trainer.fit(
        phase_train_data(teacher_config, train_data), valid_data, verbose=verbose, saved=True,
        show_progress=config["show_progress"],
    )
    checkpoint = load_checkpoint(trainer.saved_model_file, map_location=teacher_config["device"])
    teacher.load_state_dict(checkpoint["state_dict"])
    teacher.load_other_parameter(checkpoint.get("other_parameter"))
    teacher.eval()
    logger.info(
        set_color(f"Phase {prefix.rstrip('_')} done", "green")
        + f": best valid {best_score} saved in {trainer.saved_model_file}"
    )
    return teacher, {"checkpoint": trainer.saved_model_file, "trained": True, "model": teacher_config["model"],
                     "best_valid_score": best_score, "best_valid_result": best_result,
                     "train_seconds_per_epoch": sum(epoch_times) / len(epoch_times) if epoch_times else None}


class DistillationTrainer(Trainer):
    """Trainer of a student that needs a trained teacher: phase 1 trains (or loads) the teacher, phase 2 the student.

    The student model declares ``default_teacher_model`` (class attribute, a model name) and implements
    ``set_teacher(teacher)``, called once with the trained teacher in eval mode before the student's first epoch
    (the teacher must not become a registered submodule of the student, or its weights would count in the
    student's size and checkpoint). The teacher's checkpoint path is written into the run's config as
    ``teacher_checkpoint``, so the student's checkpoint records where its teacher is, and listed in
    ``self.phase_checkpoints`` (the benchmark evaluates the in-run teacher as the student's counterpart).
    """

    teacher_prefix = "teacher_"

    def __init__(self, config, model):
        super().__init__(config, model)
        self.teacher = None
        self.teacher_info = None
        self.phase_checkpoints = {}

    def prepare_teacher(self, train_data, valid_data, verbose=True):
        default = getattr(self.model, "default_teacher_model", None)
        teacher, info = train_or_load_teacher(
            self.config, train_data, valid_data, default, prefix=self.teacher_prefix, verbose=verbose
        )
        self.teacher, self.teacher_info = teacher, info
        self.config[f"{self.teacher_prefix}checkpoint"] = info["checkpoint"]
        self.phase_checkpoints["teacher"] = info["checkpoint"]
        before = {id(p) for p in self.model.parameters()}
        self.model.set_teacher(teacher)
        if {id(p) for p in self.model.parameters()} != before:
            self.setup_distributed()  # DDP must see the student's new parameters (no-op in one process)
            if self.start_epoch == 0:
                self.optimizer = self._build_optimizer()
        return teacher

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.teacher is None:
            self.prepare_teacher(train_data, valid_data, verbose=verbose)
        return super().fit(
            train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress, callback_fn=callback_fn
        )
