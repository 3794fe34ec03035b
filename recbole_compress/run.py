"""The run layer: the one place that builds a run's objects (config, data, model, trainer) and restores trained
models from checkpoints.

Every caller goes through it: the quick-start functions and the command line, the benchmark, the Ray Tune trainable
and the teacher and search phases of teacher-student models. One seeding rule holds everywhere (RecBole's): the
dataset and its split are made after ``init_seed(seed)``, the model after ``init_seed(seed + local_rank)``.

    config = make_config("SASRec", "ml-100k", config_dict={"epochs": 5})   # + every check that needs no data
    run = build(config)                    # data, data rules, model, trainer
    result = fit_and_test(run)             # RecBole's fit + test, and the best checkpoint's path
    restored = restore(result["checkpoint"])   # the trained model again, on the same data
"""
import os
import socket
from logging import getLogger

import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed, set_color

from recbole_compress.checkpoint import check_item_mapping, check_state_dict, last_checkpoint_name, load_checkpoint
from recbole_compress.config import Config, config_from_plain
from recbole_compress.errors import CheckpointError, ConfigError, DataError
from recbole_compress.model.item_compression import fit_item_codes
from recbole_compress.phases import phase_config
from recbole_compress.preflight import check_config, check_data, dataset_file_problem
from recbole_compress.registry import get_model, get_trainer


DOWNLOAD_TIMEOUT = 60  # seconds a stalled download of a catalogue dataset waits before it fails


class Data:
    """A dataset and its three data loaders (RecBole's ``data_preparation``)."""

    def __init__(self, dataset, train, valid, test):
        self.dataset, self.train, self.valid, self.test = dataset, train, valid, test


class Run:
    """Everything one run works with: ``config``, ``data`` (:class:`Data`), ``model`` and ``trainer``."""

    def __init__(self, config, data, model, trainer=None):
        self.config, self.data, self.model, self.trainer = config, data, model, trainer


def make_config(model=None, dataset=None, config_file_list=None, config_dict=None, read_cmd_line=True,
                command_line=None, also_known=()):
    """The plugin :class:`~recbole_compress.config.Config`, checked before any data loads
    (:func:`recbole_compress.preflight.check_config`).

    Args:
        command_line (dict): ``--key=value`` overrides already parsed (the plugin's CLI), used instead of
            ``sys.argv``; they win over everything, as RecBole's command line does.
        also_known (set): keys other models of a multi-model run read (accepted here, not used).

    Raises:
        ConfigError: every problem, named with its key, value and what is allowed.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict,
                    read_cmd_line=read_cmd_line, command_line=command_line)
    check_config(config, also_known)
    return config


def load_data(config):
    """The dataset and its split (after ``init_seed(seed)``), with the model's data rules checked.

    Raises:
        ConfigError: a value that does not fit this dataset. DataError: nothing to validate or test on.
    """
    init_seed(config["seed"], config["reproducibility"])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # a download of RecBole's catalogue fails clearly, never hangs
    try:
        dataset = create_dataset(config)
    finally:
        socket.setdefaulttimeout(previous)
    check_data(config, dataset)
    users, interactions = dataset.user_num - 1, dataset.inter_num  # before the split turns them into sequences
    train, valid, test = data_preparation(config, dataset)
    for name, loader in (("validation", valid), ("test", test)):
        if loader is not None and len(loader._dataset) == 0:
            raise DataError(
                f"dataset {config['dataset']!r}: no user has enough interactions for a {name} item after filtering "
                f"({users} users, {interactions} interactions; the leave-one-out split needs at "
                f"least 3 interactions per user for a validation and a test item)"
            )
    return Data(dataset, train, valid, test)


def build(config, data=None):
    """Data (unless given), model and trainer of ``config``'s run; with ``resume`` set, the trainer continues from
    that checkpoint (checked against this run's model and data before anything changes).

    ``data`` (a :class:`Data` of the same dataset) lets a phase reuse the run's split; where the phase's
    ``train_batch_size`` differs, its training loader is re-batched.
    """
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if config["resume"]:
        _adopt_written_keys(config, config["resume"], trainer_class)
    prepare_config(config)
    if data is None:
        data = load_data(config)
    else:
        data = Data(data.dataset, phase_train_data(config, data.train), data.valid, data.test)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, data.train._dataset).to(config["device"])
    if config["item_compression"] == "codebook" and config["codebook_teacher"] and not config["resume"]:
        _codes_from_teacher(model, config, data)
    trainer = trainer_class(config, model)
    if hasattr(trainer, "phases"):
        trainer.phases = PhaseRunner(config, data)
    if config["resume"]:
        trainer.resume_checkpoint(config["resume"], dataset=data.dataset)
    return Run(config, data, model, trainer)


def prepare_config(config):
    """What the run's trainer settles in the configuration before the model is built (its ``prepare_config``
    classmethod, if any): e.g. AdaRec's genotype, read from ``adarec_arch_file`` or ``search_checkpoint`` into
    ``adarec_arch``, so that no model reads a file in its constructor."""
    prepare = getattr(get_trainer(config["MODEL_TYPE"], config["model"]), "prepare_config", None)
    if prepare is not None:
        prepare(config)


def _codes_from_teacher(model, config, data):
    """A codebook-compressed model's codes and codebooks fitted to ``codebook_teacher``'s item table."""
    path = config["codebook_teacher"]
    teacher = restore(path, data, config["device"], reseed=False).model
    summary = fit_item_codes(model, teacher.item_embedding.weight, config["seed"])
    getLogger().info(
        set_color("item codes", "green") + f": fitted to the item table of {path} ({summary['steps']} steps, "
        f"reconstruction error {summary['first_mse']:.4f} -> {summary['last_mse']:.4f}; the encoder's codes: "
        f"{summary['encoder_codes']['distinct_codes']} distinct for {summary['items']} items, {summary['moved']} "
        f"items moved to a free code, now {summary['distinct_codes']} distinct)"
    )


def _adopt_written_keys(config, path, trainer_class):
    """What the interrupted run's trainer wrote into its config (its teacher's checkpoint, AdaRec's genotype), for
    the keys this run leaves unset: the resumed run continues with the same teacher and architecture."""
    saved = load_checkpoint(path)["config"]
    for key in getattr(trainer_class, "config_written", ()):
        if config[key] in (None, "") and saved.get(key) not in (None, ""):
            config[key] = saved[key]


def phase_train_data(config, train):
    """``train``, or the same training split batched by ``config``'s own ``train_batch_size`` when it differs (a
    phase's ``<prefix>train_batch_size`` is honoured)."""
    if config["train_batch_size"] == train.config["train_batch_size"]:
        return train
    from recbole.data.utils import get_dataloader

    return get_dataloader(config, "train")(config, train._dataset, train._sampler, shuffle=config["shuffle"])


class RunInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, SIGTERM). ``resume`` maps the keys that continue it to their checkpoint
    files (see :func:`resume_keys`; empty when nothing had started); ``last_file`` is the run's own last complete
    epoch (None while a phase was training)."""

    def __init__(self, model, resume, best_file):
        super().__init__(f"{model} interrupted")
        self.model, self.resume, self.best_file = model, dict(resume), best_file
        self.last_file = self.resume.get("resume")


def resume_keys(files):
    """The keys that continue an interrupted run, from ``files`` (``{"resume": the run's last-epoch file,
    "<prefix>resume": each phase's last-epoch file}``, missing files ignored): the run's own file once it has one
    (its checkpoint names the phases' finished checkpoints), else the file of every phase that had started (a
    finished phase resumed trains nothing more and hands on its random state, so the run continues exactly)."""
    existing = {key: path for key, path in files.items() if path and os.path.isfile(path)}
    if "resume" in existing:
        return {"resume": existing["resume"]}
    return existing


def run_files(trainer):
    """``{"resume": trainer's last-epoch file, "<prefix>resume": ...}`` for the trainer and the phases it built."""
    phases = getattr(trainer, "phases", None)
    return {"resume": trainer.last_model_file, **(phases.resume_files if phases is not None else {})}


def seconds_before_resume(trainer):
    """Training seconds a resumed run had spent before this process continued it: its own and its phases'."""
    phases = getattr(trainer, "phases", None)
    return trainer.seconds_before_resume + (phases.seconds_before_resume if phases is not None else 0.0)


def fit_and_test(run, saved=True, show_progress=False, verbose=True, callback_fn=None, evaluate_test=True):
    """RecBole's ``fit`` (best validation epoch saved when ``saved``), then the test of the best epoch.

    Returns:
        dict: ``model``, ``best_valid_score``, ``valid_score_bigger``, ``valid_metric``, ``best_valid_result``,
        ``test_result``
        (None when ``evaluate_test`` is False), ``checkpoint`` (the best-model file, when saved).
    """
    config, trainer = run.config, run.trainer
    try:
        best_valid_score, best_valid_result = trainer.fit(
            run.data.train, run.data.valid, verbose=verbose, saved=saved, show_progress=show_progress,
            callback_fn=callback_fn,
        )
    except KeyboardInterrupt:
        best = getattr(trainer, "saved_model_file", None)
        raise RunInterrupted(config["model"], resume_keys(run_files(trainer)),
                             best if best and os.path.isfile(best) else None) from None
    test_result = None
    if evaluate_test:
        test_result = trainer.evaluate(run.data.test, load_best_model=saved, show_progress=show_progress)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "valid_metric": config["valid_metric"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "checkpoint": trainer.saved_model_file if saved else None,
    }


def load_model_state(model, checkpoint, path):
    """Load a checkpoint's weights into ``model``; weights that do not fit are a :class:`CheckpointError` that names
    the tensor, raised before anything changes."""
    check_state_dict(checkpoint["state_dict"], model, path)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))


def restore(checkpoint_file, data=None, device=None, reseed=True):
    """The model saved in a plugin checkpoint, rebuilt from the checkpoint's own configuration and weights, on
    ``data`` (default: the checkpoint's dataset and split, loaded again). Returns a :class:`Run` without trainer.
    ``reseed=False`` builds the model without touching the random state (a phase inside a running run).

    Raises:
        CheckpointError: an unsafe, damaged or foreign file, another dataset's item ids, weights that do not fit.
    """
    path = str(checkpoint_file)
    checkpoint = load_checkpoint(path)
    config = config_from_plain(checkpoint["config"])
    if device is not None:
        config["device"] = device
    if data is None:
        missing = dataset_file_problem(config)
        if missing:
            raise ConfigError(f"{path} was trained on a dataset that is not here: {missing}")
        data = load_data(config)
    check_item_mapping(checkpoint, data.dataset, repr(path))
    if reseed:
        init_seed(config["seed"], config["reproducibility"])
    prepare_config(config)  # a checkpoint saved before its trainer wrote everything into the config
    model = get_model(config["model"])(config, data.train._dataset)
    load_model_state(model, checkpoint, repr(path))
    return Run(config, data, model.to(config["device"]))


class PhaseRunner:
    """The phases of a run (a teacher trained first, AdaRec's search), given to its trainer as ``trainer.phases``:
    each phase is built by this layer on the run's own split."""

    def __init__(self, config, data):
        self.config, self.data = config, data
        self.logger = getLogger()
        self.resume_files = {}  # "<prefix>resume": the last-epoch file of each phase built so far
        self.on_phase_built = None  # called with no argument before a phase trains (the benchmark's marker)
        self.seconds = {}  # "<prefix>": fit seconds of each phase this run trained, before a stop included
        self.seconds_before_resume = 0.0  # of those, the seconds spent in the processes before this one

    def record_seconds(self, prefix, trainer):
        """Note what a phase's training took (``trainer.fit_seconds()``), once it has trained."""
        self.seconds[prefix] = trainer.fit_seconds()
        self.seconds_before_resume += trainer.seconds_before_resume

    def restore_seconds(self, seconds):
        """The phases' seconds from the checkpoint of a run resumed after its phases had finished."""
        self.seconds = {prefix: float(value) for prefix, value in seconds.items()}
        self.seconds_before_resume = sum(self.seconds.values())

    def build(self, prefix, model=None, extra=None):
        """A :class:`Run` of one phase (``model`` default: the phase's model in the run's config). The run's
        ``<prefix>resume`` continues the phase from its last-epoch file, like ``resume`` for the run itself."""
        run = build(phase_config(self.config, prefix, model, extra), self.data)
        self.resume_files[f"{prefix}resume"] = run.trainer.last_model_file
        if self.on_phase_built is not None:
            self.on_phase_built()
        return run

    def teacher(self, prefix, verbose=True, show_progress=False):
        """The phase's trained model in eval mode: loaded from ``<prefix>checkpoint`` if set, else trained now (and
        its best epoch reloaded).

        Returns:
            (model, info dict with ``checkpoint``, ``trained``, ``model``, ``best_valid_score``,
            ``best_valid_result``, ``stopped_by`` ("early stopping", "epoch cap", or "loaded" for a given
            checkpoint), ``fit_seconds`` (what its training took, a part before a stop included; None for a
            checkpoint this run did not train), and for a trained phase ``epochs_run``,
            ``train_seconds_per_epoch`` and ``resumed_from`` (its ``<prefix>resume`` file, if it continued one)).
            A run resumed after this phase had finished loads the phase's checkpoint and reports its training as
            the uninterrupted run would, from the phase's own last-epoch file.
        """
        path = self.config[f"{prefix}checkpoint"]
        name = prefix.rstrip("_")
        if path:
            restored = restore(path, self.data, self.config["device"], reseed=False)
            trained_here = prefix in self.seconds  # the run's checkpoint holds this phase's seconds: it trained it
            self.logger.info(set_color(f"Phase {name}", "green") + f": reusing {restored.config['model']} from {path}"
                             + (", trained by this run before it was stopped" if trained_here else ""))
            restored.model.eval()
            info = self._record_of_earlier_training(prefix, path) if trained_here else {
                "trained": False, "best_valid_score": None, "best_valid_result": None, "stopped_by": "loaded",
                "fit_seconds": None}
            return restored.model, dict(info, checkpoint=path, model=restored.config["model"])
        phase = self.build(prefix)
        done = phase.trainer.start_epoch >= phase.config["epochs"]  # resumed from a phase that had finished
        self.logger.info(set_color(f"Phase {name}", "green") + (
            f": {phase.config['model']} continued from {phase.config['resume']}, which had finished" if done else
            f": training {phase.config['model']} for up to {phase.config['epochs']} epochs"))
        phase.trainer.fit(phase.data.train, phase.data.valid, verbose=verbose, saved=True,
                          show_progress=show_progress)
        self.record_seconds(prefix, phase.trainer)
        path = phase.trainer.saved_model_file
        load_model_state(phase.model, load_checkpoint(path, map_location=phase.config["device"]), repr(path))
        phase.model.eval()
        trainer = phase.trainer
        self.logger.info(set_color(f"Phase {name} done", "green") + f": best valid {trainer.best_valid_score} "
                         f"saved in {path}")
        info = training_record(trainer.best_valid_score, trainer.best_valid_result, trainer.train_loss_dict,
                               trainer.cur_step, trainer.stopping_step, trainer.epoch_seconds, trainer.fit_seconds())
        info.update(checkpoint=path, model=phase.config["model"], resumed_from=phase.config["resume"])
        return phase.model, info

    def _record_of_earlier_training(self, prefix, path):
        """What :meth:`teacher` returned when this run trained the phase, before the run was stopped: read from the
        phase's last-epoch file (its training's final state), with the phase's seconds from the run's checkpoint."""
        last = last_checkpoint_name(path)
        if not os.path.exists(last):
            self.logger.warning(f"{last}, the last-epoch file of the phase that trained {path}, is gone: its epochs "
                                f"and why it stopped are not known")
            return {"trained": True, "best_valid_score": None, "best_valid_result": None, "stopped_by": None,
                    "fit_seconds": self.seconds[prefix]}
        state = load_checkpoint(last)
        return training_record(state["best_valid_score"], state.get("best_valid_result"),
                               state.get("train_loss_dict") or {}, state["cur_step"], state["config"]["stopping_step"],
                               state.get("epoch_seconds") or [], self.seconds[prefix])


def training_record(best_valid_score, best_valid_result, train_loss_dict, cur_step, stopping_step, epoch_seconds,
                    fit_seconds):
    """How a finished training went, as plain values: its best validation, epochs run, what ended it (RecBole's
    early stopping ends a training when ``cur_step`` exceeds ``stopping_step``) and its seconds."""
    return {"trained": True, "best_valid_score": float(best_valid_score), "best_valid_result": best_valid_result,
            "epochs_run": len(train_loss_dict),
            "stopped_by": "early stopping" if cur_step > stopping_step else "epoch cap",
            "train_seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
            "fit_seconds": float(fit_seconds)}


def counterpart_size(run):
    """``(name, parameters)`` of the model a compressed model is measured against (its ``counterpart``): a model
    built with its own defaults and the run's settings it reads (e.g. the same ``hidden_size``), on the same data;
    for ``"teacher"`` the run's teacher; for a model with ``item_compression``, the same model with its full item
    table. None when the model names no counterpart."""
    from recbole_compress.preflight import run_keys
    from recbole_compress.profiling import count_parameters

    counterpart = getattr(type(run.model), "counterpart", None)
    if run.config["item_compression"]:  # the same model with its full item table
        counterpart = type(run.model).compressed_from
    if counterpart == "teacher":
        teacher = getattr(run.trainer, "teacher", None)
        if teacher is None:
            return None
        return f"its teacher ({type(teacher).__name__})", count_parameters(teacher, inference=True)
    if counterpart is None:
        return None
    cls = get_model(counterpart)
    reads = run_keys(cls)
    settings = {k: v for k, v in run.config.external_config_dict.items()
                if k in reads and k not in ("model", "item_compression")}
    config = Config(model=cls, dataset=run.config["dataset"], config_dict=settings, read_cmd_line=False)
    return cls.__name__, count_parameters(cls(config, run.data.train._dataset), inference=True)


def ensure_threads(num_threads):
    """``torch.set_num_threads`` for a CPU process (no-op where ``num_threads`` is falsy)."""
    if num_threads and not torch.cuda.is_available():
        torch.set_num_threads(int(num_threads))
