"""Hyperparameter search on Ray Tune for plugin and RecBole models, on this machine or an existing Ray cluster.

    python run_recbole_compress.py --model=LSAN --tune
    python run_recbole_compress.py --model=SASRec --tune --params_file=my.hyper --num_samples=20 --epochs=30
    python run_recbole_compress.py --model=CpRec --tune --address=auto          # join a running Ray cluster
    python -m recbole_compress.tune --model=SASRec ...                          # the same command

The search space is a params file in RecBole's syntax (``properties/hyper/<Model>.hyper`` unless ``--params_file``
names one): one hyperparameter a line,

    learning_rate loguniform -8,-5        # exp(-8) .. exp(-5), natural-log bounds as in RecBole
    dropout_prob uniform 0.1,0.5
    block_num quniform 2,6,2              # 2, 4 or 6 (integer bounds and step give integers)
    hidden_size choice [32, 64, 128]

Blank lines, lines starting with ``#`` and trailing ``# comments`` are skipped (RecBole's own reader knows no
comments: the shipped files have none); any other malformed line is an error naming the file and the line. Every other ``--key=value`` fixes a configuration key for all trials, as on the normal command line.

Why not RecBole's own Ray script (``run_hyper.py --tool=Ray``): with the ray release RecBole pins (2.6.3) it asks each
trial for a GPU, so trials wait forever on a CPU machine; its result lacks the scheduler's metric, which Ray's strict
metric check rejects; and it reports once per trial, so ASHA cannot stop a bad trial early. Here:

- each trial reports once per epoch (validation metrics and training loss) through ``Trainer.fit``'s callback, so the
  ASHA scheduler (default; ``--scheduler=fifo`` to run every trial to the end) stops poor trials early; the metric and
  its direction come from the configuration's ``valid_metric``;
- trials use CPUs only unless the cluster has GPUs or ``--gpus_per_trial`` asks for them;
- each trial runs in its own folder (``<storage_path>/<name>/trial_<id>/``: RecBole's log, tensorboard and its
  checkpoints in ``saved/``), so trials never share a checkpoint file;
- a trial that fails (bad hyperparameters, NaN loss) is reported failed and the search goes on;
- at the end the best trial's checkpoint is evaluated on the test set (the test set plays no part in the search),
  and a table of all trials, the best configuration and the one command that reruns it are printed and written to
  ``--output_file`` (default ``<storage_path>/<name>/trials.md``, with ``trials.json`` beside it);
- a trial's console output is kept in its own folder (``stdout``, ``stderr``);
- an interrupted search (Ctrl-C) lists its unfinished trials as ``interrupted`` / ``not started``, announces and tests
  no best trial, exits with status 130 and prints the command that continues it:
  ``python run_recbole_compress.py --tune --resume=<storage_path>/<name>`` (Ray's ``Tuner.restore``; an interrupted
  trial continues from its last complete epoch).
"""
import argparse
import ast
import datetime
import glob
import json
import math
import os
import shlex
import signal
import sys
import threading
from collections import namedtuple

from recbole_compress import properties_path
from recbole_compress.commandline import (
    announce_budget,
    check_override_keys,
    cpu_budget,
    format_table,
    parse_overrides,
    report_error,
)
from recbole_compress.errors import ConfigError
from recbole_compress.phases import phases_of
from recbole_compress.preflight import closest_keys, rules_of, run_keys
from recbole_compress.registry import get_model

PARAM_TYPES = ("choice", "uniform", "loguniform", "quniform")
STOPPED = "stopped early by the scheduler"
INTERRUPTED = "interrupted"
NOT_STARTED = "not started"
_SYNTAX = (
    "expected `name choice [v1, v2, ...]`, `name uniform low,high`, `name loguniform low,high` (natural-log bounds: "
    "exp(low) .. exp(high)) or `name quniform low,high,q`"
)

Param = namedtuple("Param", "name type values line")
Param.__doc__ = """One hyperparameter of a params file: ``type`` in :data:`PARAM_TYPES`, ``values`` the list of a
``choice`` or the numbers of a range, ``line`` its line number."""


class ParamsFileError(ConfigError):
    """A params file that cannot be read: the message names the file, the line and the expected syntax."""


# ----------------------------------------------------------------------------------------------------------------
# Params files (RecBole's syntax)
# ----------------------------------------------------------------------------------------------------------------


def _numbers(text, count, where):
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count or any(not p for p in parts):
        raise ParamsFileError(f"{where}: needs {count} comma-separated numbers, got {text!r}; {_SYNTAX}")
    numbers = []
    for part in parts:
        try:
            numbers.append(int(part) if part.lstrip("+-").isdigit() else float(part))
        except ValueError:
            raise ParamsFileError(f"{where}: {part!r} is not a number; {_SYNTAX}") from None
    return numbers


def parse_params_file(path):
    """Read a params file in RecBole's syntax into a list of :class:`Param`.

    Stricter than RecBole's reader, which silently skips a line with fewer than three fields and evaluates ``choice``
    lists with ``eval``: here a malformed line raises :class:`ParamsFileError` with the file and line number, and
    ``choice`` takes a Python literal list (numbers, strings, booleans, None, nested lists).
    """
    if not os.path.isfile(path):
        raise ParamsFileError(f"params file {path!r} does not exist")
    params, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}, line {number} ({line!r})"
            fields = line.split()
            if len(fields) < 3:
                raise ParamsFileError(f"{where}: needs a name, a type and a value; {_SYNTAX}")
            name, kind = fields[0], fields[1]
            if not name.isidentifier():
                raise ParamsFileError(f"{where}: {name!r} is not a configuration key name")
            if kind not in PARAM_TYPES:
                raise ParamsFileError(f"{where}: unknown type {kind!r} (allowed: {', '.join(PARAM_TYPES)}); {_SYNTAX}")
            if name in seen:
                raise ParamsFileError(f"{where}: {name!r} is already defined on line {seen[name]}")
            text = " ".join(fields[2:])
            uncommented = text.split("#", 1)[0].strip()  # a trailing `# comment`
            if kind == "choice":
                values = None
                for candidate in dict.fromkeys((text, uncommented)):  # a '#' may sit inside a quoted value
                    try:
                        values = ast.literal_eval(candidate)
                        break
                    except (ValueError, SyntaxError):
                        continue
                if values is None:
                    raise ParamsFileError(f"{where}: {uncommented!r} is not a Python literal list; {_SYNTAX}")
                if not isinstance(values, (list, tuple)) or not values:
                    raise ParamsFileError(f"{where}: choice needs a non-empty list such as [32, 64]; {_SYNTAX}")
                values = list(values)
            elif kind == "quniform":
                values = _numbers(uncommented, 3, where)
                if values[2] <= 0 or values[0] > values[1]:
                    raise ParamsFileError(f"{where}: quniform needs low <= high and q > 0, got {text!r}")
            else:
                values = _numbers(uncommented, 2, where)
                if values[0] >= values[1]:
                    raise ParamsFileError(f"{where}: {kind} needs low < high, got {text!r}")
            seen[name] = number
            params.append(Param(name, kind, values, number))
    if not params:
        raise ParamsFileError(f"params file {path!r} defines no hyperparameter; {_SYNTAX}")
    return params


def planned_trials(params, algo, num_samples):
    """How many trials the search runs: ``num_samples`` repeats of the grid of ``choice`` lines (exhaustive), or
    ``num_samples`` samples."""
    if algo != "exhaustive":
        return num_samples
    grid = 1
    for p in params:
        grid *= len(p.values)
    return grid * num_samples


def ray_search_space(params, algo="random"):
    """Ray Tune's search space for ``params``. ``algo='exhaustive'`` makes every ``choice`` a grid (RecBole's
    exhaustive search), and refuses ranges."""
    from ray import tune

    space = {}
    for p in params:
        if p.type == "choice":
            space[p.name] = tune.grid_search(p.values) if algo == "exhaustive" else tune.choice(p.values)
            continue
        if algo == "exhaustive":
            raise ParamsFileError(
                f"line {p.line}: exhaustive search takes `choice` lines only, {p.name!r} is a {p.type} range "
                f"(use --algo=random or --algo=bayes)"
            )
        low, high = p.values[0], p.values[1]
        if p.type == "uniform":
            space[p.name] = tune.uniform(float(low), float(high))
        elif p.type == "loguniform":
            space[p.name] = tune.loguniform(math.exp(low), math.exp(high))
        elif all(isinstance(v, int) for v in p.values):
            space[p.name] = tune.qrandint(low, high, p.values[2])
        else:
            space[p.name] = tune.quniform(float(low), float(high), float(p.values[2]))
    return space


def hyperopt_space(path):
    """The hyperopt space of a params file, for RecBole's ``HyperTuning(space=...)``: the same reading as the Ray
    search (comments allowed, errors with line numbers, integer ``quniform`` giving integers)."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    space = {}
    for p in parse_params_file(path):
        if p.type == "choice":
            space[p.name] = hp.choice(p.name, p.values)
        elif p.type == "uniform":
            space[p.name] = hp.uniform(p.name, float(p.values[0]), float(p.values[1]))
        elif p.type == "loguniform":
            space[p.name] = hp.loguniform(p.name, float(p.values[0]), float(p.values[1]))
        else:
            q = hp.quniform(p.name, float(p.values[0]), float(p.values[1]), float(p.values[2]))
            space[p.name] = scope.int(q) if all(isinstance(v, int) for v in p.values) else q
    return space


def default_params_file(model):
    """``properties/hyper/<Model>.hyper`` of a plugin or RecBole model, or a clear error listing what exists."""
    name = get_model(model).__name__
    path = properties_path("hyper", f"{name}.hyper")
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        shipped = sorted(f[:-6] for f in os.listdir(folder) if f.endswith(".hyper")) if os.path.isdir(folder) else []
        raise ConfigError(
            f"no search space is shipped for {name} (properties/hyper/{name}.hyper); give one with --params_file=FILE "
            f"(RecBole's params-file syntax). Shipped: {', '.join(shipped) or '(none)'}"
        )
    return path


def check_param_keys(model, params, path):
    """Refuse searched keys that no part of the model's run reads (a typo would otherwise search nothing)."""
    known = run_keys(model)
    for p in params:
        if p.name not in known:
            close = closest_keys(p.name, known)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ParamsFileError(f"{path}, line {p.line}: {p.name!r} is not a configuration key of {model}{hint}")


# ----------------------------------------------------------------------------------------------------------------
# One trial
# ----------------------------------------------------------------------------------------------------------------


def _plain(value):
    """numpy scalars and arrays from Ray's samplers into plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (list, dict, str)):
        return value.tolist()  # a numpy scalar gives a Python scalar, an array a (nested) list
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def trial_config(params, spec, trial_dir, gpu_ids=()):
    """The ``config_dict`` of one trial: the fixed settings, the sampled hyperparameters, and the trial's own
    checkpoint folder and device."""
    config_dict = dict(spec["config_dict"])
    config_dict.update({k: _plain(v) for k, v in params.items()})
    config_dict["model"] = spec["model"]
    config_dict["dataset"] = spec["dataset"]
    config_dict["checkpoint_dir"] = os.path.join(trial_dir, "saved")
    config_dict["gpu_id"] = ",".join(str(int(float(g))) for g in gpu_ids)  # '' -> CPU
    config_dict["show_progress"] = False
    return config_dict


def _trainable(config, spec):
    """Ray Tune's function trainable: train one configuration, reporting after every validation."""
    import ray
    import torch
    from ray.air import session

    from recbole_compress.quick_start import objective_function

    from recbole_compress.commandline import quiet_known_noise

    quiet_known_noise()
    trial_dir = session.get_trial_dir()
    os.makedirs(trial_dir, exist_ok=True)
    os.chdir(trial_dir)  # RecBole's log/ and log_tensorboard/ are relative to the working directory
    torch.set_num_threads(max(1, int(spec["cpus_per_trial"])))
    config_dict = trial_config(config, spec, trial_dir, ray.get_gpu_ids())
    last = sorted(glob.glob(os.path.join(trial_dir, "saved", "*-last.pth")), key=os.path.getmtime)
    if last:  # a trial of a restored search continues from its last complete epoch
        config_dict["resume"] = last[-1]

    def report(epoch_report):
        session.report(dict(epoch_report, epochs_done=epoch_report["epoch"] + 1))

    objective_function(config_dict, spec["config_file_list"], saved=True, callback_fn=report, evaluate_test=False)


def _trial_dirname(trial):
    return f"trial_{trial.trial_id}"


def _evaluate_test(checkpoint_file, num_threads):
    """Test result of a trial's best checkpoint (runs as a Ray task on the node that holds the file)."""
    import torch

    from recbole_compress.registry import get_trainer
    from recbole_compress.run import restore

    torch.set_num_threads(max(1, int(num_threads)))
    os.chdir(os.path.dirname(os.path.dirname(checkpoint_file)))  # the trial's folder: its log/ gets this log too
    restored = restore(checkpoint_file)
    config = restored.config
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, restored.model)
    return {k: float(v) for k, v in trainer.evaluate(restored.data.test, load_best_model=False).items()}


# ----------------------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------------------


def _path_keys(model):
    """The keys of a run of ``model`` whose values are paths: ``data_path``, the declared file keys of the model,
    its trainer and its item compression (``adarec_arch_file``, ``codebook_teacher``, ...) and every phase's
    ``<prefix>checkpoint``."""
    keys, _ = rules_of(model)
    names = {"data_path"} | {key.name for key in keys if key.file}
    return names | {phase.prefix + "checkpoint" for phase in phases_of(model)}


def _absolute_paths(model, config_dict, config_file_list):
    """Trials run in their own folders: make file paths absolute before they start."""
    config_dict = dict(config_dict)
    for key in sorted(_path_keys(model)):
        value = config_dict.get(key)
        if isinstance(value, str) and value and value not in ("None", "~") and not os.path.isabs(value):
            config_dict[key] = os.path.abspath(value)
    files = [os.path.abspath(f) for f in config_file_list] if config_file_list else None
    return config_dict, files


def _error_line(error):
    """The error of a failed trial in one line: its last ``...Error: message`` line, with the indented lines that
    continue it (a list of configuration problems)."""
    lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if ("Error" in line or "Exception" in line) and not line.startswith("File "):
            rest = [nxt.strip() for nxt in lines[i + 1:] if nxt.startswith("  ") and not nxt.strip().startswith("File ")]
            return " ".join([line] + rest)[:500]
    return (lines[-1].strip() if lines else type(error).__name__)[:500]


def _ray_init(address, num_cpus, verbose):
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=verbose >= 2)
        return True
    # a local Ray: its workers must import this package even when it is not pip-installed
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    ray.init(
        num_cpus=num_cpus or None,
        include_dashboard=False,
        log_to_driver=verbose >= 2,
        object_store_memory=256 * 1024 * 1024,
        configure_logging=verbose >= 2,
        logging_level="WARNING",
    )
    return True


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _shell_word(word):
    """``word`` quoted for a POSIX shell, readably: bare if safe, in double quotes if that suffices."""
    quoted = shlex.quote(word)
    if quoted == word or any(c in word for c in '"$`\\!'):
        return quoted
    return f'"{word}"'


def rerun_command(model, dataset, config_file_list, config_dict, params):
    """The one command that trains and tests ``params`` with the search's fixed settings."""
    parts = ["python", "run_recbole_compress.py", f"--model={model}", f"--dataset={dataset}"]
    if config_file_list:
        parts.append("--config_files=" + " ".join(config_file_list))
    for key, value in list(config_dict.items()) + list(params.items()):
        if isinstance(value, float):
            value = repr(value)
        parts.append(f"--{key}={value}")
    return " ".join(_shell_word(p) for p in parts)


def _search_setup(model, dataset, config_file_list, config_dict, params_file, algo, scheduler):
    """Every check before Ray starts; returns the search's settings (``spec`` for the trials, the space, metric)."""
    from recbole_compress.run import make_config

    model = get_model(model).__name__
    params_file = os.path.abspath(params_file or default_params_file(model))
    params = parse_params_file(params_file)
    check_param_keys(model, params, params_file)
    config_dict = dict(config_dict or {})
    clash = sorted(set(config_dict) & {p.name for p in params})
    if clash:
        raise ConfigError(f"{', '.join(clash)} is both searched (in {params_file}) and fixed (--key=value): drop one")
    if algo not in ("random", "exhaustive", "bayes"):
        raise ConfigError(f"algo must be one of random, exhaustive, bayes; got {algo!r}")
    if scheduler not in ("asha", "fifo"):
        raise ConfigError(f"scheduler must be asha or fifo, got {scheduler!r}")
    ray_search_space(params, algo)  # refuses ranges in an exhaustive search
    config_dict, config_file_list = _absolute_paths(model, config_dict, config_file_list)
    # the fixed settings must make a valid configuration before any trial starts (RecBole's Config sets
    # CUDA_VISIBLE_DEVICES to its gpu_id: restore it, or a local Ray would see only that GPU)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        base = make_config(model, dataset, config_file_list, dict(config_dict), read_cmd_line=False)
    finally:
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
    if base["dataset"] != "ml-100k" and "data_path" not in config_dict:
        config_dict["data_path"] = os.path.dirname(os.path.normpath(base["data_path"]))
    return {"model": model, "dataset": dataset, "config_dict": config_dict, "config_file_list": config_file_list,
            "params_file": params_file, "metric": base["valid_metric"].lower(),
            "mode": "max" if base["valid_metric_bigger"] else "min", "epochs": int(base["epochs"]), "algo": algo,
            "scheduler": scheduler}


def _trainable_of(spec, cpus_per_trial, gpus_per_trial):
    from ray import tune

    trial_spec = {k: spec[k] for k in ("model", "dataset", "config_dict", "config_file_list")}
    trial_spec["cpus_per_trial"] = cpus_per_trial
    return tune.with_resources(tune.with_parameters(_trainable, spec=trial_spec),
                               {"cpu": cpus_per_trial, "gpu": gpus_per_trial})


def _new_tuner(spec, trainable, options):
    """The Tuner of a new search (scheduler, search algorithm, one folder per trial, trial output kept in files)."""
    from ray import air, tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    params = parse_params_file(spec["params_file"])
    if spec["scheduler"] == "asha":
        sched = ASHAScheduler(time_attr="epochs_done", max_t=options["max_t"] or spec["epochs"],
                              grace_period=options["grace_period"], reduction_factor=options["reduction_factor"])
    else:
        sched = FIFOScheduler()
    search_alg = None
    if spec["algo"] == "bayes":
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg = HyperOptSearch(random_state_seed=options["search_seed"])
    elif options["search_seed"] is not None:
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=options["search_seed"])
    return tune.Tuner(
        trainable,
        param_space=ray_search_space(params, spec["algo"]),
        tune_config=tune.TuneConfig(
            metric=spec["metric"], mode=spec["mode"], scheduler=sched, search_alg=search_alg,
            num_samples=options["num_samples"], max_concurrent_trials=options["max_concurrent_trials"] or None,
            trial_name_creator=_trial_dirname, trial_dirname_creator=_trial_dirname,
        ),
        run_config=air.RunConfig(
            name=spec["name"], storage_path=spec["storage_path"], verbose=options["verbose"], log_to_file=True,
            failure_config=air.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )


SEARCH_FILE = "search.json"


def run_search(model, dataset="ml-100k", config_file_list=None, config_dict=None, params_file=None, num_samples=None,
               algo="random", scheduler="asha", max_t=None, grace_period=1, reduction_factor=2, cpus_per_trial=1,
               gpus_per_trial=None, max_concurrent_trials=0, address=None, num_cpus=None, storage_path="ray_results",
               name=None, output_file=None, verbose=1, search_seed=None):
    """Run a Ray Tune search and return its summary (also written to ``output_file`` and ``trials.json``).

    Args:
        model (str): plugin or RecBole model.
        config_file_list, config_dict: fixed settings of every trial (``config_dict`` as ``--key=value``).
        params_file (str): search space in RecBole's params-file syntax (default ``properties/hyper/<Model>.hyper``).
        num_samples (int): trials to sample (random/bayes; default 10); with ``algo='exhaustive'`` the number of
            repeats of the grid (default 1).
        algo (str): ``random`` (Ray's sampling), ``exhaustive`` (the grid of all ``choice`` lines) or ``bayes``
            (TPE through Ray's HyperOptSearch), as RecBole's ``HyperTuning`` names them.
        scheduler (str): ``asha`` (early stopping; ``max_t`` epochs at most, default the config's ``epochs``,
            ``grace_period``, ``reduction_factor``) or ``fifo``.
        cpus_per_trial, gpus_per_trial: resources of one trial; ``gpus_per_trial=None`` means 1 if the cluster has a
            GPU, else 0.
        address (str): an existing Ray cluster (``auto``, ``ray://host:10001``); None starts a local Ray (with
            ``num_cpus`` CPUs) and stops it at the end.
        storage_path, name: the search's folder is ``<storage_path>/<name>`` (its settings in ``search.json``, so
            that :func:`resume_search` can continue it).

    Returns:
        dict: ``metric``, ``mode``, ``trials`` (rows), ``best`` (row or None), ``best_test_result``,
        ``rerun_command``, ``output_file``, ``experiment_dir``, ``interrupted``.
    """
    spec = _search_setup(model, dataset, config_file_list, config_dict, params_file, algo, scheduler)
    spec["name"] = name or f"{spec['model']}-{dataset}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    spec["storage_path"] = os.path.abspath(storage_path)
    experiment_dir = os.path.join(spec["storage_path"], spec["name"])
    spec["output_file"] = os.path.abspath(output_file or os.path.join(experiment_dir, "trials.md"))
    spec["resources"] = {"cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial}
    options = {"num_samples": num_samples or (1 if algo == "exhaustive" else 10), "max_t": max_t,
               "grace_period": grace_period, "reduction_factor": reduction_factor, "search_seed": search_seed,
               "max_concurrent_trials": max_concurrent_trials, "verbose": verbose}
    spec["planned_trials"] = planned_trials(parse_params_file(spec["params_file"]), algo, options["num_samples"])
    os.makedirs(experiment_dir, exist_ok=True)
    with open(os.path.join(experiment_dir, SEARCH_FILE), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2)
    return _execute(spec, lambda trainable: _new_tuner(spec, trainable, options), address, num_cpus, verbose)


def resume_search(experiment_dir, address=None, num_cpus=None, verbose=1):
    """Continue an interrupted search (``Tuner.restore``): finished trials are kept, unfinished ones continue from
    their last complete epoch (each trial resumes its own ``-last.pth`` checkpoint), never-started ones start."""
    path = os.path.join(os.path.abspath(experiment_dir), SEARCH_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"--resume={experiment_dir!r}: no search was started there (no {SEARCH_FILE}); give the "
                          f"search's folder, <storage_path>/<name>")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)

    def restored(trainable):
        from ray import tune

        return tune.Tuner.restore(os.path.dirname(path), trainable, resume_unfinished=True, resume_errored=False)

    return _execute(spec, restored, address, num_cpus, verbose)


def _fit_noting_interrupt(tuner):
    """``(ResultGrid, interrupted)``. Ray Tune (2.6) replaces the SIGINT handler while it runs and puts the previous
    one back only when a Ctrl-C stops it, so a sentinel handler found in place afterwards means the search was
    interrupted (Ray marks the trials it stopped TERMINATED, and trials never created are not in the grid)."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False

    def sentinel(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, sentinel)
    try:
        grid = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is sentinel
    finally:
        signal.signal(signal.SIGINT, previous)
    return grid, interrupted


def _execute(spec, make_tuner, address, num_cpus, verbose):
    """Start (or join) Ray, run the tuner, summarise, test the best trial unless the search was interrupted."""
    import ray

    started = _ray_init(address, num_cpus, verbose)
    try:
        gpus = spec["resources"]["gpus_per_trial"]
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        cpus = spec["resources"]["cpus_per_trial"]
        grid, interrupted = _fit_noting_interrupt(make_tuner(_trainable_of(spec, cpus, gpus)))
        params = parse_params_file(spec["params_file"])
        rows = _trial_rows(grid, params, spec["metric"], spec["mode"], interrupted)
        if interrupted:  # trials Ray had not created yet are not in its grid: list them as not started
            rows += [{"trial": "(not created yet)", "params": {}, "epochs": 0, "status": NOT_STARTED}
                     for _ in range(spec.get("planned_trials", 0) - len(rows))]
        interrupted = interrupted or any(r["status"] in (INTERRUPTED, NOT_STARTED) for r in rows)
        best = None if interrupted else _best_row(rows, spec["mode"])
        best_test = _test_of(best, cpus, gpus) if best is not None and best.get("checkpoint_file") else None
    finally:
        if started:
            ray.shutdown()
    experiment_dir = os.path.join(spec["storage_path"], spec["name"])
    summary = {
        "model": spec["model"], "dataset": spec["dataset"], "params_file": spec["params_file"],
        "metric": spec["metric"], "mode": spec["mode"], "algo": spec["algo"], "scheduler": spec["scheduler"],
        "experiment_dir": experiment_dir, "output_file": spec["output_file"], "trials": rows, "best": best,
        "best_test_result": best_test, "interrupted": interrupted,
        "rerun_command": rerun_command(spec["model"], spec["dataset"], spec["config_file_list"], spec["config_dict"],
                                       best["params"]) if best else None,
        "resume_command": f"python run_recbole_compress.py --tune --resume={_shell_word(experiment_dir)}",
    }
    _write_summary(summary)
    return summary


def _ray_trials(grid):
    """``{trial folder name: Ray's Trial}`` (its status: TERMINATED, ERROR, RUNNING, PAUSED, PENDING)."""
    analysis = getattr(grid, "_experiment_analysis", None)
    return {_trial_dirname(t): t for t in getattr(analysis, "trials", None) or []}


def _trial_rows(grid, params, metric, mode, interrupted=False):
    rows = []
    names = [p.name for p in params]
    trials = _ray_trials(grid)
    for i in range(len(grid)):
        result = grid[i]
        path = getattr(result, "path", None) or str(result.log_dir)
        name = os.path.basename(os.path.normpath(path))
        trial = trials.get(name)
        config = (trial.config if trial is not None else None) or result.config or {}
        row = {"trial": name, "params": {k: _plain(config.get(k)) for k in names if k in config}, "trial_dir": path}
        history = result.metrics_dataframe
        reports = 0 if history is None or metric not in getattr(history, "columns", ()) else len(history)
        row["epochs"] = reports
        metrics = result.metrics or {}
        if reports:
            values = history[metric].astype(float)
            row["best_valid_score"] = float(values.max() if mode == "max" else values.min())
            row["last_train_loss"] = float(history["train_loss"].iloc[-1]) if "train_loss" in history else None
            row["checkpoint_file"] = metrics.get("checkpoint_file") or str(history["checkpoint_file"].iloc[-1])
            row["node_ip"] = metrics.get("node_ip") or str(history["node_ip"].iloc[-1])
        status = getattr(trial, "status", "TERMINATED")
        last_validation = not reports or _truthy(history["last_validation"].iloc[-1] if "last_validation" in history
                                                 else True)
        if result.error is None and (status in ("RUNNING", "PAUSED", "PENDING")
                                     or (interrupted and not last_validation)):  # stopped by the interruption
            row["status"] = INTERRUPTED if reports else NOT_STARTED
        elif result.error is not None:
            row["status"] = "failed: " + _error_line(result.error)
        elif not last_validation:
            row["status"] = STOPPED  # the scheduler stopped it before its trainer's last validation
        else:
            row["status"] = "ok"
        rows.append(row)
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (failed(r), "best_valid_score" not in r, sign * r.get("best_valid_score", 0)))
    return rows


def _truthy(value):
    return str(value).strip().lower() in ("true", "1", "1.0")


def failed(row):
    """True for a trial row whose trial raised an error."""
    return row["status"].startswith("failed")


def _best_row(rows, mode):
    scored = [r for r in rows if "best_valid_score" in r]
    ok = [r for r in scored if not failed(r)] or scored
    if not ok:
        return None
    pick = max if mode == "max" else min
    return pick(ok, key=lambda r: r["best_valid_score"])


def _test_of(row, cpus, gpus):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = None
    for node in ray.nodes():
        if node.get("Alive") and node.get("NodeManagerAddress") == row.get("node_ip"):
            node_id = node["NodeID"]
            break
    options = {"num_cpus": cpus, "num_gpus": gpus}
    if node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    task = ray.remote(_evaluate_test).options(**options)
    try:
        return ray.get(task.remote(row["checkpoint_file"], cpus))
    except Exception as e:  # the table is still worth having
        return {"error": _error_line(e)}


def format_summary(summary):
    """The printed (and written) report: the trials table, the best configuration and the rerun command."""
    names = []
    for row in summary["trials"]:
        names += [k for k in row["params"] if k not in names]
    metric = summary["metric"]
    rows = []
    for row in summary["trials"]:
        flat = {"trial": row["trial"], "status": row["status"], "epochs": row["epochs"]}
        flat.update({k: _format_value(v) for k, v in row["params"].items()})
        if "best_valid_score" in row:
            flat["best_valid"] = row["best_valid_score"]
        if summary["best"] is row and summary["best_test_result"]:
            flat["test"] = ", ".join(f"{k}={_format_value(v)}" for k, v in summary["best_test_result"].items())
        rows.append(flat)
    columns = [("trial", "trial")] + [(n, n) for n in names]
    columns += [("epochs", "epochs"), ("best_valid", f"best valid {metric}"), ("test", "test (best trial)"),
                ("status", "status")]
    lines = [
        f"# Ray Tune search: {summary['model']} on {summary['dataset']}",
        "",
        f"Space: {summary['params_file']}; algo {summary['algo']}, scheduler {summary['scheduler']}; "
        f"metric {metric} ({summary['mode']}); trials in {summary['experiment_dir']}",
        "",
        format_table(rows, columns),
        "",
    ]
    n_failed = sum(1 for r in summary["trials"] if failed(r))
    n_stopped = sum(1 for r in summary["trials"] if r["status"] == STOPPED)
    lines.append(f"{len(summary['trials'])} trials, {n_failed} failed, {n_stopped} stopped early by the scheduler.")
    best = summary["best"]
    if summary.get("interrupted"):
        unfinished = sum(1 for r in summary["trials"] if r["status"] in (INTERRUPTED, NOT_STARTED))
        lines += ["", f"The search was interrupted: {unfinished} trial(s) did not finish, so no best configuration is "
                      f"announced or tested. Continue it with:", "", f"    {summary['resume_command']}"]
    elif best is None:
        lines.append("No trial reported a validation score: no best configuration.")
    else:
        lines += [
            "",
            f"Best trial: {best['trial']} ({metric} = {best['best_valid_score']:.4f})",
            f"Best configuration: {json.dumps(best['params'])}",
            f"Test result of the best trial: {json.dumps(summary['best_test_result'])}",
            f"Best checkpoint: {best.get('checkpoint_file', '')}",
            "",
            "Rerun the best configuration:",
            "",
            f"    {summary['rerun_command']}",
        ]
    return "\n".join(lines) + "\n"


def _write_summary(summary):
    folder = os.path.dirname(summary["output_file"])
    os.makedirs(folder, exist_ok=True)
    with open(summary["output_file"], "w", encoding="utf-8") as f:
        f.write(format_summary(summary))
    json_file = os.path.splitext(summary["output_file"])[0] + ".json"
    with open(json_file, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def build_parser(prog="run_recbole_compress.py --tune"):
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Ray Tune search over a params file (RecBole syntax); other --key=value pairs fix config keys.",
    )
    parser.add_argument("--model", "-m", type=str, default="LSAN", help="one model (plugin or RecBole); default LSAN")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name; default ml-100k")
    parser.add_argument("--config_files", type=str, default=None, help="fixed config files, separated by spaces")
    parser.add_argument("--params_file", type=str, default=None,
                        help="search space (RecBole's params-file syntax); default properties/hyper/<Model>.hyper")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="trials to sample (default 10); with --algo=exhaustive, repeats of the grid (default 1)")
    parser.add_argument("--algo", choices=("random", "exhaustive", "bayes"), default="random",
                        help="random sampling (default), exhaustive grid of the choice lines, or bayes (TPE)")
    parser.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                        help="asha (default) stops poor trials early; fifo runs every trial to the end")
    parser.add_argument("--max_t", type=int, default=None, help="ASHA: most epochs of a trial (default: epochs)")
    parser.add_argument("--grace_period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    parser.add_argument("--reduction_factor", type=float, default=2, help="ASHA: keep 1/reduction_factor per rung")
    parser.add_argument("--cpus_per_trial", type=float, default=1, help="CPUs of one trial (default 1)")
    parser.add_argument("--gpus_per_trial", type=float, default=None,
                        help="GPUs of one trial (default: 1 if the cluster has a GPU, else 0)")
    parser.add_argument("--max_concurrent_trials", type=int, default=0, help="0: as many as resources allow")
    parser.add_argument("--address", type=str, default=None,
                        help="join an existing Ray cluster (auto, ray://host:10001); default: start a local Ray")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--storage_path", type=str, default="ray_results", help="folder of searches (ray_results)")
    parser.add_argument("--name", type=str, default=None, help="search name (default <model>-<dataset>-<time>)")
    parser.add_argument("--output_file", type=str, default=None,
                        help="trials table (default <storage_path>/<name>/trials.md; a .json beside it)")
    parser.add_argument("--search_seed", type=int, default=None, help="seed of the sampler (reproducible spaces)")
    parser.add_argument("--verbose", type=int, default=1, help="Ray Tune verbosity 0-3; >= 2 shows trial logs")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, extra = build_parser().parse_known_args(argv)
    try:
        overrides = parse_overrides(extra)
        if "resume" in overrides:  # --resume=<search folder> continues an interrupted search
            summary = resume_search(overrides.pop("resume"), address=args.address, num_cpus=args.num_cpus,
                                    verbose=args.verbose)
        else:
            summary = _search_from_args(args, overrides)
    except ConfigError as e:
        return report_error(e)
    print()
    print(format_summary(summary))
    print(f"(written to {summary['output_file']})")
    if summary["interrupted"]:
        return 130
    return 0 if summary["best"] is not None else 1


def _search_from_args(args, overrides):
    if "," in args.model:
        raise ConfigError("--tune searches one model at a time: give a single --model")
    model = get_model(args.model).__name__
    check_override_keys([model], overrides)
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    budget = cpu_budget(overrides)  # trials get the main command's CPU budget (so its rerun command reproduces them)
    if budget:
        config_files = [budget[0]] + (config_files or [])
        announce_budget(budget)
    options = {k: getattr(args, k) for k in (
        "params_file", "num_samples", "algo", "scheduler", "max_t", "grace_period", "reduction_factor",
        "cpus_per_trial", "gpus_per_trial", "max_concurrent_trials", "address", "num_cpus", "storage_path", "name",
        "output_file", "verbose", "search_seed")}
    return run_search(model, dataset=args.dataset, config_file_list=config_files, config_dict=overrides, **options)


if __name__ == "__main__":
    sys.exit(main())
