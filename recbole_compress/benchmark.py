"""Side-by-side benchmark: compressed models beside their uncompressed counterparts, on one split, under one
protocol, with confidence intervals.

    python -m recbole_compress.benchmark --plan benchmarks/all_five_beauty.yaml --data_path <datasets> --jobs 2
    python -m recbole_compress.benchmark --models SASRec,NextItNet,GRU4Rec --seeds 2020,2021,2022
    python -m recbole_compress.benchmark --models LSAN,SASRec --dataset beauty --data_path ../datasets --use_context=False
    python -m recbole_compress.benchmark --plan benchmarks/lsan_beauty.yaml --data_path <datasets> \
        --only LSAN-m2-2layers --seeds 2020     # a one-seed probe of one entry (and its counterpart)

Every entry trains under the same protocol (``properties/preset/benchmark_protocol.yaml``, chosen by measurement,
see docs/benchmarks/protocol.md: batch size, learning rate, early stopping on valid NDCG@10 with a patience, a cap on
epochs that is rarely reached, best-epoch reload) and the same seeds, through the run layer (RecBole's data pipeline
and full-ranking evaluator), and is reported with:

- test NDCG@10, HR@10, MRR@10 of the best validation epoch (mean and standard deviation over seeds), the epochs each
  seed ran and whether early stopping (not the cap) ended it;
- against its counterpart: the ratio of mean test NDCG@10 with a 95 % bootstrap interval over seeds and the same
  test users (:mod:`recbole_compress.intervals`; per-user test ranks are kept in ``results.json``), and a verdict
  on the entry's ``goal`` (``met`` / ``missed`` / ``within noise``);
- parameter count and state_dict bytes, and both as a ratio of the entry's counterpart;
- training seconds per epoch (mean over the epochs run);
- full-ranking inference time per batch of test users, timed in one process for every entry, interleaved with the
  counterpart's on the same users, and its ratio of the counterpart's;
- peak memory of one training step and of one inference batch, as the model's own allocations during the call
  (:func:`recbole_compress.profiling.peak_memory`), not the process's resident size.

Results go to ``<output_dir>/results.json``, ``results.md``, ``pareto.png`` (NDCG@10 against parameters) and
``pareto_inference.png`` (against inference time). A plan survives a stop: finished (entry, seed) trainings whose
settings are unchanged are not redone, and an (entry, seed) interrupted in the middle of its training continues from
its last complete epoch (the run layer's exact resume; for a teacher-student entry interrupted in its teacher or
search phase, from that phase's last complete epoch), so the plan ends with the same numbers as an uninterrupted
one. One benchmark at a time uses a folder: a second one on the same ``--output_dir`` stops at once with exit code 2
(it would resume the first one's entries and overwrite its results). Every training runs at one thread: ``--jobs 2``
trains two (entry, seed) pairs at a time, each in its own process; ``--jobs 1`` trains them one after another in the
benchmark's process. The timing after training stays in one process, at one thread unless ``--timing_threads``
says otherwise.

A plan file (YAML) names entries with their own settings::

    dataset: ml-100k
    data_path: ~                # folder holding <dataset>/<dataset>.inter (not needed for ml-100k)
    seeds: [2020, 2021, 2022]
    protocol: ~                 # a protocol preset file (default properties/preset/benchmark_protocol.yaml)
    epochs: ~                   # the protocol's cap and patience, unless set here
    stopping_step: ~
    counterpart: SASRec         # default counterpart label
    goal: {ndcg@10_ratio: 0.95} # default goal of a compressed entry against its counterpart
    config: {}                  # overrides for every entry (each entry gets the keys its model reads)
    entries:
      - {label: SASRec, model: SASRec}
      - {label: LSAN-m3, model: LSAN, counterpart: SASRec, config: {compression_rate: 3}, goal: {ndcg@10_ratio: 0.95}}

Optional model hooks: ``param_breakdown()`` (dict) and ``benchmark_report()`` (dict of extra figures) are recorded.
A trainer with ``phase_checkpoints = {"teacher": path}`` (teacher-student models) adds the row ``<label>/teacher``,
evaluated on the same test users; ``counterpart: teacher`` (or the model class's ``counterpart = "teacher"``)
compares the student with it. An entry's setting ``"@<label>"`` is that entry's checkpoint of the same seed, and
``"@<label>/teacher"`` the teacher that entry trained in its run (an ablation distilled from the same teacher).
"""
import argparse
import copy
import hashlib
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from logging import getLogger

import torch
import yaml

from recbole_compress import properties_path
from recbole_compress.benchmark_report import (
    RESULTS_VERSION, counterpart_row, referenced_entry, references, row_labels, summarise, write_outputs,
)
from recbole_compress.checkpoint import to_plain
from recbole_compress.commandline import parse_value, quiet_known_noise
from recbole_compress.errors import ConfigError
from recbole_compress.registry import get_model, get_trainer

PROTOCOL_FILE = ("preset", "benchmark_protocol.yaml")
#: protocol keys that are plan fields (the rest go into every entry's config)
PLAN_FIELDS = ("epochs", "stopping_step")


# ----------------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------------

def _read_yaml(path, what):
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _apply_protocol(plan):
    """The protocol preset's settings under the plan's: cap and patience as plan fields, the rest as the config
    every entry starts from (an entry may still override a key, visibly, in its own config)."""
    path = plan.get("protocol") or properties_path(*PROTOCOL_FILE)
    protocol = _read_yaml(path, "protocol file")
    plan["protocol_file"] = os.path.relpath(path) if os.path.isabs(path) else path
    for key in PLAN_FIELDS:
        if plan.get(key) is None:
            plan[key] = protocol.get(key)
    plan["protocol_config"] = {k: v for k, v in protocol.items() if k not in PLAN_FIELDS}
    plan["valid_metric"] = protocol.get("valid_metric", "NDCG@10")


def _plan_from_args(args, extra):
    plan = {}
    if args.plan:
        plan = _read_yaml(args.plan, "plan file")
        plan.setdefault("name", os.path.splitext(os.path.basename(args.plan))[0])
    if args.models:
        plan["entries"] = [{"label": m.strip(), "model": m.strip()} for m in args.models.split(",") if m.strip()]
    for key in ("dataset", "data_path", "epochs", "stopping_step", "counterpart", "infer_batch_users", "infer_batches",
                "protocol"):
        value = getattr(args, key)
        if value is not None:
            plan[key] = value
    if args.seeds is not None:
        plan["seeds"] = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if args.config_files:
        plan["config_files"] = args.config_files.split()
    config = dict(plan.get("config") or {})
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"unrecognised argument {arg!r}: overrides for every entry are written --key=value")
        key, value = arg[2:].split("=", 1)
        config[key] = parse_value(value)
    plan["config"] = config
    return plan


def _has_teacher_phase(model):
    return any(p.prefix == "teacher_" for p in getattr(model, "phases", ()))


def _resolve_entries(plan):
    entries = plan.get("entries") or []
    if not entries:
        raise ConfigError("no models to benchmark: give --models A,B or a --plan file with entries")
    labels = set()
    for entry in entries:
        if "model" not in entry:
            raise ConfigError(f"plan entry {entry!r} has no 'model'")
        entry.setdefault("label", entry["model"])
        entry.setdefault("config", {})
        entry["model"] = get_model(entry["model"]).__name__
        if entry["label"] in labels:
            raise ConfigError(f"plan entries share the label {entry['label']!r}: labels must be unique")
        labels.add(entry["label"])
    default_cp = plan.get("counterpart") or entries[0]["label"]
    for entry in entries:
        model = get_model(entry["model"])
        cp = entry.get("counterpart")
        if cp is None:
            cp = getattr(model, "counterpart", None)
            if cp not in labels and cp != "teacher":
                cp = default_cp
        if cp == "teacher":  # its in-run teacher's row; nothing for a model without a teacher (e.g. the teacher)
            cp = f"{entry['label']}/teacher" if _has_teacher_phase(model) else entry["label"]
        entry["counterpart"] = cp


def _keep_only(plan, labels):
    """Keep the entries named by ``--only`` and those they need: their counterparts and ``@label`` references."""
    by_label = {e["label"]: e for e in plan["entries"]}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise ConfigError(f"--only={','.join(labels)}: no entry labelled {', '.join(map(repr, unknown))} in the plan "
                          f"(its labels: {', '.join(by_label)})")
    keep, todo = set(), list(labels)
    while todo:
        label = todo.pop()
        if label in keep or label not in by_label:  # e.g. the counterpart '<label>/teacher' is a row, not an entry
            continue
        keep.add(label)
        todo += [by_label[label]["counterpart"]] + [referenced_entry(r) for r in references(by_label[label]).values()]
    plan["entries"] = [e for e in plan["entries"] if e["label"] in keep]


def build_plan(args, extra):
    """The plan of a benchmark run: the plan file (if any), the command line over it, the protocol preset under
    both; every entry resolved (model class name, label, counterpart)."""
    plan = _plan_from_args(args, extra)
    plan.setdefault("dataset", "ml-100k")
    plan.setdefault("data_path", None)
    plan.setdefault("seeds", [2020, 2021, 2022])
    plan.setdefault("infer_batch_users", 256)
    plan.setdefault("infer_batches", 4)
    plan.setdefault("config_files", [])
    plan.setdefault("name", plan["dataset"])
    _apply_protocol(plan)
    _resolve_entries(plan)
    if getattr(args, "only", None):
        _keep_only(plan, [label.strip() for label in args.only.split(",") if label.strip()])
    for file in plan["config_files"]:
        if not os.path.isfile(file):
            raise ConfigError(f"config file {file!r} does not exist")
    if plan["dataset"] != "ml-100k" and not plan["data_path"]:
        raise ConfigError(f"dataset {plan['dataset']!r} needs --data_path (a folder holding {plan['dataset']}/)")
    return plan


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)


def entry_folder(output_dir, entry, seed):
    """The checkpoint folder of one (entry, seed): its best and last checkpoints, and its resume marker."""
    return os.path.join(output_dir, "checkpoints", _slug(f"{entry['label']}@{seed}"))


def entry_config(plan, entry, seed, output_dir):
    """The config_dict of one (entry, seed): the protocol's settings, the plan's settings that the entry's model
    reads (a plan-wide key such as ``hidden_size`` applies to the entries that have it), the entry's own settings,
    and the plan's budget and seed."""
    from recbole_compress.commandline import keys_of_models

    own = dict(entry["config"])
    shared = dict(plan["protocol_config"], **plan["config"])
    reads = keys_of_models([entry["model"]], dict(shared, **own))[entry["model"]]
    cfg = {k: copy.deepcopy(v) for k, v in shared.items() if k in reads}
    cfg.update(copy.deepcopy(own))
    cfg.update({"epochs": plan["epochs"], "stopping_step": plan["stopping_step"], "seed": seed,
                "checkpoint_dir": entry_folder(output_dir, entry, seed), "show_progress": False})
    if plan["data_path"]:
        cfg["data_path"] = plan["data_path"]
    return cfg


def settings_hash(plan, entry):
    """What an (entry, seed) result depends on: its model, label, counterpart and effective configuration (the same
    in every plan that trains it alike, so plans can share trainings: ``--reuse_from``)."""
    config = entry_config(plan, entry, 0, "")
    for key in ("seed", "checkpoint_dir", "data_path", "show_progress"):
        config.pop(key, None)
    settings = {"model": entry["model"], "label": entry["label"], "counterpart": entry["counterpart"],
                "dataset": plan["dataset"], "config": config, "config_files": plan["config_files"]}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def defaults_digest(config):
    """What an entry's defaults were when it trained: the digest of its configuration's internal part (RecBole's and
    the plugin's property files for this model and dataset). ``settings_hash`` covers what the plan sets; this
    covers what it leaves to the defaults, so that a training made before a default changed is not reused. A key
    declared with a ``neutral`` value (``Key(..., neutral=...)``: added later, with a default that keeps the model's
    old behaviour) is left out while its default is that value. A fix that changes a model's results without changing
    a setting raises ``results_revision`` on the model or trainer class: it enters the digest once above 0, so the
    trainings made before the fix are made again (and no other model's digest changes)."""
    internal = dict(getattr(config, "internal_config_dict", None) or {})
    model = get_model(config["model"])
    for key in getattr(model, "config_keys", ()):
        if key.name in internal and key.is_neutral(internal[key.name]):
            del internal[key.name]
    revisions = results_revisions(model)
    if any(revisions):
        internal["results_revision"] = revisions
    return hashlib.sha256(json.dumps(internal, sort_keys=True, default=str).encode()).hexdigest()[:16]


def results_revisions(model):
    """``[model's, trainer's]`` ``results_revision`` (0 where a class declares none)."""
    model = get_model(model)
    return [getattr(owner, "results_revision", 0) for owner in (model, get_trainer(model.type, model))]


def without_checkpoint(record):
    """A training reused from another plan's results without its checkpoint, which is not on this machine."""
    return bool(record.get("reused_from")) and record.get("checkpoint") is None


def earlier_timing(saved, run, plan):
    """The timing and memory figures that the run which wrote ``saved`` measured for ``run``'s row (a plan times its
    first seed only), without the inference ratio unless that run timed it against the counterpart this plan gives
    the row; None if it has none."""
    if run.get("seed") != (saved.get("plan") or {}).get("seeds", [None])[0]:
        return None
    row = next((r for r in saved.get("summary") or [] if r["label"] == run["label"]), None)
    if row is None:
        return None
    timing = {k: row[k] for k in MEASURED_KEYS if k in row}
    entries = {e["label"]: e for e in plan["entries"]}
    ours = counterpart_row(entries[run["label"]]) if run["label"] in entries else run.get("counterpart")
    if row.get("counterpart") != ours:
        timing.pop("infer_ratio", None)
    return timing or None


def same_defaults(record, entry):
    """A record is usable for an entry unless both know their defaults and they differ. A record written before
    defaults were recorded is taken as it is, unless a fix has revised the entry's model's results since
    (``results_revision``): it predates the fix."""
    ours, theirs = entry.get("defaults_digest"), record.get("defaults_digest")
    if theirs is None:
        return not any(results_revisions(entry["model"]))
    return ours is None or ours == theirs


# ----------------------------------------------------------------------------------------------------------------
# phase 1: training
# ----------------------------------------------------------------------------------------------------------------

def _plain(obj):
    return to_plain(obj)


def _export_sizes(model):
    from recbole_compress.export.eodrec import size_report

    return size_report(model)


#: Figures the benchmark adds to a model's own ``benchmark_report`` (models never import the exporter).
MODEL_REPORTS = {"EODRec": _export_sizes}


def _model_extras(model):
    extras = {}
    for hook in ("param_breakdown", "benchmark_report"):
        fn = getattr(model, hook, None)
        if callable(fn):
            try:
                extras[hook] = _plain(fn())
            except Exception as e:  # a report hook must never cost the run
                extras[hook] = {"error": f"{type(e).__name__}: {e}"}
    extra = MODEL_REPORTS.get(type(model).__name__)
    if extra is not None:
        try:
            extras.setdefault("benchmark_report", {}).update(_plain(extra(model)))
        except Exception as e:
            extras.setdefault("benchmark_report", {})["error"] = f"{type(e).__name__}: {e}"
    return extras


def test_ranks(trainer):
    """The 0-based rank of each test user's item in the top k of the last evaluation (-1: not in the top k), in the
    order of the test loader, from what RecBole's evaluator received (``rec.topk``)."""
    struct = trainer.last_eval_struct
    if struct is None or "rec.topk" not in struct:
        return None
    hits = struct.get("rec.topk")[:, :-1].bool()
    first = hits.to(torch.int64).argmax(dim=1)
    return torch.where(hits.any(dim=1), first, torch.full_like(first, -1)).tolist()


def trained_on():
    """What a training's numbers depend on beyond the seed and settings: torch's version and the instruction set its
    CPU kernels use (oneDNN's convolutions, e.g. NextItNet's, sum in a different order on AVX2 than on AVX-512, so
    such a model retrained on another CPU does not repeat its numbers)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def test_users(data):
    """The original ids of the test users, in the order the test loader gives them."""
    uid_field = data.dataset.uid_field
    uids = torch.cat([batch[0][uid_field] for batch in data.test]).tolist()
    return [str(t) for t in data.dataset.id2token(uid_field, uids)]


def _marker(folder):
    return os.path.join(folder, "in_progress.json")


def _resume_point(folder, digest, entry):
    """The keys that continue an interrupted training of this (entry, seed) with these settings (``resume``, or a
    phase's ``<prefix>resume``: :func:`recbole_compress.run.resume_keys`), empty if there is none."""
    from recbole_compress.run import resume_keys

    try:
        with open(_marker(folder), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return {}
    if marker.get("settings_hash") != digest or not same_defaults(marker, entry):
        return {}
    files = marker.get("files") or {"resume": marker.get("last_file")}  # markers before phases were resumable
    return resume_keys(files)


def _mark_in_progress(folder, digest, entry, files):
    """Where this (entry, seed)'s training saves its last epochs (and its phases'), written before each trains."""
    os.makedirs(folder, exist_ok=True)
    with open(_marker(folder), "w", encoding="utf-8") as f:
        json.dump({"settings_hash": digest, "defaults_digest": entry.get("defaults_digest"), "files": files}, f)


def train_entry(plan, entry, seed, output_dir, digest=None):
    """Train one (entry, seed) (continuing an interrupted training of it), reload its best epoch, evaluate it on the
    test split; returns its records (and the teacher's, for a teacher-student entry)."""
    from recbole_compress.logs import start_logging
    from recbole_compress.profiling import count_parameters, state_dict_bytes
    from recbole_compress.run import build, fit_and_test, make_config, run_files, seconds_before_resume, training_record

    digest = digest or settings_hash(plan, entry)
    cfg = entry_config(plan, entry, seed, output_dir)
    resume = _resume_point(cfg["checkpoint_dir"], digest, entry)
    cfg.update(resume)
    config = make_config(entry["model"], plan["dataset"], plan["config_files"] or None, cfg, read_cmd_line=False)
    start_logging(config)
    getLogger().info(f"benchmark: training {entry['label']} ({entry['model']}), seed {seed}"
                     + (f", continuing from {resume}" if resume else ""))
    run = build(config)

    def mark():
        _mark_in_progress(cfg["checkpoint_dir"], digest, entry, run_files(run.trainer))

    mark()
    if getattr(run.trainer, "phases", None) is not None:
        run.trainer.phases.on_phase_built = mark  # a phase's last-epoch file is recorded before the phase trains
    start = time.perf_counter()
    result = fit_and_test(run, saved=True, show_progress=False)
    trainer, model = run.trainer, run.model
    training = training_record(result["best_valid_score"], None, trainer.train_loss_dict, trainer.cur_step,
                               trainer.stopping_step, trainer.epoch_seconds,
                               time.perf_counter() - start + seconds_before_resume(trainer))
    record = {
        "label": entry["label"], "model": entry["model"], "seed": seed,
        "test_result": {k: float(v) for k, v in result["test_result"].items()},
        "test_ranks": test_ranks(trainer),
        **{key: training[key] for key in ("best_valid_score", "epochs_run", "stopped_by", "train_seconds_per_epoch",
                                          "fit_seconds")},
        "fit_seconds_before_resume": seconds_before_resume(trainer) if resume else None,
        "resumed_from": resume or None,
        "checkpoint": trainer.saved_model_file,
        "params": count_parameters(model, inference=True),
        "state_dict_bytes": state_dict_bytes(model),
        "trained_on": trained_on(),
    }
    record.update(_model_extras(model))
    phases = dict(getattr(trainer, "phase_checkpoints", {}) or {})
    record["phase_checkpoints"] = phases
    records = [record]
    if phases.get("teacher"):
        records.append(_teacher_record(entry, seed, run, phases["teacher"]))
    return records, test_users(run.data)


def _teacher_record(entry, seed, run, teacher_path):
    """The in-run teacher of a teacher-student entry, evaluated on the same test users."""
    from recbole_compress.profiling import count_parameters, state_dict_bytes
    from recbole_compress.run import restore
    from recbole_compress.trainer import Trainer

    teacher = restore(teacher_path, run.data, run.config["device"])
    evaluator = Trainer(teacher.config, teacher.model)
    teacher_test = evaluator.evaluate(run.data.test, load_best_model=False)
    info = getattr(run.trainer, "teacher_info", None) or {}
    record = {
        "label": f"{entry['label']}/teacher", "model": teacher.config["model"], "seed": seed,
        "test_result": {k: float(v) for k, v in teacher_test.items()},
        "test_ranks": test_ranks(evaluator),
        "best_valid_score": float(info["best_valid_score"]) if info.get("best_valid_score") is not None else None,
        "epochs_run": info.get("epochs_run"), "stopped_by": info.get("stopped_by"),
        "train_seconds_per_epoch": info.get("train_seconds_per_epoch"),
        "fit_seconds": info.get("fit_seconds"), "resumed_from": info.get("resumed_from"),
        "checkpoint": teacher_path,
        "params": count_parameters(teacher.model, inference=True),
        "state_dict_bytes": state_dict_bytes(teacher.model),
        "phase_checkpoints": {},
        "teacher_of": entry["label"],
        "trained_on": trained_on(),
    }
    record.update(_model_extras(teacher.model))
    return record


def _worker_dies_with_parent():
    """Pool initializer: on Linux, the worker gets SIGTERM when the benchmark process dies (``kill <pid>`` of the
    benchmark alone would otherwise leave its workers training on, unseen, and writing into the results folder);
    the stopped entry continues from its last epoch on the next run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the benchmark died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _train_in_worker(plan, entry, seed, output_dir, digest):
    """One (entry, seed) in a worker process of ``--jobs N``: one thread, RecBole's noise filtered."""
    torch.set_num_threads(1)
    quiet_known_noise()
    return train_entry(plan, entry, seed, output_dir, digest)


# ----------------------------------------------------------------------------------------------------------------
# phase 2: timing and memory, in one process, on the same test users
# ----------------------------------------------------------------------------------------------------------------

def _load_for_measurement(checkpoint_path, plan, n_users, n_batches, teacher_path=None):
    from recbole_compress.run import restore

    restored = restore(checkpoint_path)
    config, model = restored.config, restored.model
    config["show_progress"] = False
    if teacher_path and hasattr(model, "set_teacher"):
        model.set_teacher(restore(teacher_path, restored.data, config["device"]).model)
    model.eval()
    users = []
    for batched in restored.data.test:
        interaction = batched[0]
        for start in range(0, len(interaction), n_users):
            users.append(interaction[start:start + n_users].to(config["device"]))
            if len(users) >= n_batches:
                break
        if len(users) >= n_batches:
            break
    train_batch = next(iter(restored.data.train)).to(config["device"])
    return {"model": model, "batches": users, "train_batch": train_batch, "config": config}


def _train_step_peak(model, batch, learning_rate):
    from recbole_compress.profiling import peak_memory

    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    state = copy.deepcopy(model.state_dict())

    def step():
        optimizer.zero_grad()
        losses = model.calculate_loss(batch)
        loss = sum(losses) if isinstance(losses, tuple) else losses
        loss.backward()
        optimizer.step()

    step()  # warm-up: optimizer state and lazily built buffers exist before the measured step
    _, peak = peak_memory(step)
    model.load_state_dict(state)
    model.eval()
    return peak


def measure(plan, runs, repeats=5):
    """Inference time per batch (interleaved with the counterpart), peak memory of inference and of a training step,
    for the first seed's checkpoint of every row."""
    from recbole_compress.profiling import interleaved_times, peak_memory

    seed = plan["seeds"][0]
    rows = [r for r in runs.values() if r["seed"] == seed and r.get("checkpoint")]
    loaded, measured = {}, {}
    for row in rows:
        teacher_path = (row.get("phase_checkpoints") or {}).get("teacher")
        try:
            loaded[row["label"]] = _load_for_measurement(
                row["checkpoint"], plan, plan["infer_batch_users"], plan["infer_batches"], teacher_path
            )
        except Exception as e:
            measured[row["label"]] = {"measure_error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()

    def predictor(item):
        model, batches = item["model"], item["batches"]

        def run():
            with torch.no_grad():
                for batch in batches:
                    model.full_sort_predict(batch)

        return run

    # every row's own time, interleaved with its counterpart's (the row the table compares it with) on the same users
    entries = {e["label"]: e for e in plan["entries"]}
    counterpart_of = {r["label"]: counterpart_row(entries[r["label"]]) if r["label"] in entries
                      else r.get("counterpart") for r in rows}
    for label, item in loaded.items():
        cp = counterpart_of.get(label)
        fns = {label: predictor(item)}
        if cp in loaded and cp != label:
            fns[cp] = predictor(loaded[cp])
        times = interleaved_times(fns, repeats=repeats, warmup=1)
        n = len(item["batches"])
        result = measured.setdefault(label, {})
        result["infer_ms_per_batch"] = 1000 * times[label] / max(n, 1)
        if cp in times and cp != label:
            result["infer_ratio"] = times[label] / times[cp]
        with torch.no_grad():
            _, result["infer_peak_bytes"] = peak_memory(item["model"].full_sort_predict, item["batches"][0])
        try:
            result["train_peak_bytes"] = _train_step_peak(
                item["model"], item["train_batch"], item["config"]["learning_rate"]
            )
        except Exception as e:
            result["train_peak_error"] = f"{type(e).__name__}: {e}"
    return measured


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m recbole_compress.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", help="plan file (YAML) with entries and their settings")
    p.add_argument("--models", help="comma-separated models (each its own entry), instead of or over --plan entries")
    p.add_argument("--only", help="comma-separated labels: run only these entries of the plan, with the entries "
                                  "they are compared with or take a checkpoint from (e.g. a probe of one ablation)")
    p.add_argument("--dataset", help="dataset name (default ml-100k)")
    p.add_argument("--data_path", help="folder holding <dataset>/<dataset>.inter (not needed for ml-100k)")
    p.add_argument("--protocol", help="protocol preset file (default properties/preset/benchmark_protocol.yaml)")
    p.add_argument("--epochs", type=int, help="epoch cap for every model (default: the protocol's)")
    p.add_argument("--stopping_step", type=int, help="early-stopping patience for every model (default: the protocol's)")
    p.add_argument("--seeds", help="comma-separated seeds (default 2020,2021,2022)")
    p.add_argument("--counterpart", help="default counterpart label (default: the first entry)")
    p.add_argument("--config_files", help="config files for every entry, separated by spaces")
    p.add_argument("--infer_batch_users", type=int, help="test users per timed inference batch (default 256)")
    p.add_argument("--infer_batches", type=int, help="timed inference batches (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats (median is reported)")
    p.add_argument("--timing_threads", type=int, default=1,
                   help="torch threads of the timing after training (default 1, like the trainings: more threads "
                        "than free cores, e.g. next to another run, make every timing meaningless); 0 = torch's "
                        "setting")
    p.add_argument("--jobs", type=int, default=1, help="(entry, seed) trainings at a time, one thread each (default 1)")
    p.add_argument("--output_dir", help="results folder (default benchmark_results/<plan name>)")
    p.add_argument("--report_only", action="store_true",
                   help="write the table and plots again from the results folder, without training or timing (the "
                        "timing of the last full run is kept), e.g. after the report itself changed")
    p.add_argument("--reuse_from", action="extend", nargs="+", default=[], metavar="FOLDER_OR_FILE",
                   help="other plans' results folders or results files (e.g. committed docs/benchmarks/<plan>.json, "
                        "several at once or a shell pattern; the first that holds an (entry, seed) gives it): "
                        "its finished (entry, seed) trainings with the same label and settings are used, not trained "
                        "again; one whose checkpoint is not on this machine gives its accuracy and the timing that run "
                        "measured, if any, unless an entry takes its checkpoint (\"@label\") and this run trains "
                        "(repeatable)")
    return p


def with_checkpoints(entry, seed, results):
    """The entry with its ``@label`` settings replaced by those entries' checkpoints for ``seed``."""
    refs = references(entry)
    if not refs:
        return entry
    entry = copy.deepcopy(entry)
    for key, label in refs.items():
        entry["config"][key] = results.runs[f"{label}@{seed}"]["checkpoint"]
    return entry


def _in_run_teacher_rows(plan):
    """``<label>/teacher`` of every entry that trains its teacher in the run (no ``@`` teacher of its own)."""
    rows = set()
    for entry in plan["entries"]:
        if _has_teacher_phase(get_model(entry["model"])) and not entry["config"].get("teacher_checkpoint"):
            rows.add(f"{entry['label']}/teacher")
    return rows


def check_plan(plan, output_dir):
    """Every entry's configuration, checked before the first one trains (an ``@label`` reference must name an
    entry of the plan; the checkpoint it will resolve to is checked when it exists)."""
    from recbole_compress.commandline import check_override_keys
    from recbole_compress.preflight import check_data_rules_early
    from recbole_compress.run import make_config

    check_override_keys([e["model"] for e in plan["entries"]], plan["config"],
                        strict=plan["config"].get("strict_config_keys", True) is not False)
    labels = {e["label"] for e in plan["entries"]} | _in_run_teacher_rows(plan)
    for entry in plan["entries"]:
        refs = references(entry)
        unknown = sorted(set(refs.values()) - labels)
        if unknown:
            raise ConfigError(f"entry {entry['label']!r} refers to {', '.join('@' + u for u in unknown)}, not an "
                              f"entry of the plan or the in-run teacher of one")
        checked = dict(entry, config={k: v for k, v in entry["config"].items() if k not in refs})
        config = make_config(entry["model"], plan["dataset"], plan["config_files"] or None,
                             entry_config(plan, checked, plan["seeds"][0], output_dir), read_cmd_line=False)
        entry["defaults_digest"] = defaults_digest(config)
        check_data_rules_early(config)


class Results:
    """The (entry, seed) records of a plan, saved after every training so that a stopped plan resumes."""

    def __init__(self, plan, path):
        self.plan, self.path = plan, path
        self.runs, self.test_users = {}, None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            self.runs, self.test_users = saved.get("runs", {}), saved.get("test_users")

    def reuse(self, source, plan, training=True):
        """Finished trainings of another plan's results (its folder, or a results file such as a committed
        ``docs/benchmarks/<plan>.json``) whose label and settings match an entry of this plan. A training whose
        checkpoint is not on this machine is reused for its accuracy and for the timing that run measured (if any),
        unless an entry of this plan takes its checkpoint (``"@label"``) and this run trains: that one trains again.
        A run that only reports (``training=False``) takes every matching training so, with the timing its run
        measured, whether or not the checkpoint is here: the same files give the same table on every machine."""
        path = source if os.path.isfile(source) else os.path.join(source, "results.json")
        if not os.path.isfile(path):
            raise ConfigError(f"--reuse_from={source!r}: neither a results file nor a folder with results.json")
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        wanted = {settings_hash(plan, e): e for e in plan["entries"]}
        taken = {label.split("/")[0] for e in plan["entries"] for label in references(e).values()} if training \
            else set()
        reused = 0
        for key, run in saved.get("runs", {}).items():
            owner = run.get("teacher_of") or run["label"]
            entry = wanted.get(run.get("settings_hash"))
            if (entry is None or entry["label"] != owner or not same_defaults(run, entry) or run.get("error")
                    or key in self.runs):
                continue
            if not training or not os.path.isfile(run.get("checkpoint") or ""):
                if owner in taken:
                    continue
                run = dict(run, checkpoint=None, reused_from=path, reused_timing=earlier_timing(saved, run, plan))
            if self.test_users is None:
                self.test_users = saved.get("test_users")
            if saved.get("test_users") == self.test_users:
                self.runs[key] = run
                reused += 1
        return reused

    def done(self, key, digest, entry):
        run = self.runs.get(key)
        if not (run and run.get("settings_hash") == digest and same_defaults(run, entry) and not run.get("error")):
            return False
        return os.path.isfile(run.get("checkpoint") or "") or without_checkpoint(run)

    def add(self, entry, seed, digest, records, users):
        if self.test_users is None:
            self.test_users = users
        elif users != self.test_users:
            raise RuntimeError(f"{entry['label']}@{seed} was tested on other users than the plan's first entry")
        for record in records:
            record["settings_hash"] = digest
            record["defaults_digest"] = entry.get("defaults_digest")
            record["counterpart"] = entry["counterpart"] if record["label"] == entry["label"] else None
            self.runs[f"{record['label']}@{seed}"] = record
        self.save()

    def fail(self, entry, seed, digest, error):
        self.runs[f"{entry['label']}@{seed}"] = {"label": entry["label"], "model": entry["model"], "seed": seed,
                                                 "error": error, "test_result": {}, "settings_hash": digest}
        self.save()

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": RESULTS_VERSION, "plan": self.plan, "test_users": self.test_users,
                       "runs": self.runs}, f, indent=1, default=str)
        os.replace(tmp, self.path)


def train_all(plan, results, output_dir, jobs):
    """Every (entry, seed) not done yet, ``jobs`` at a time; returns the failures."""
    todo = []
    for entry in plan["entries"]:
        digest = settings_hash(plan, entry)
        for seed in plan["seeds"]:
            key = f"{entry['label']}@{seed}"
            if results.done(key, digest, entry):
                how = " (its checkpoint is not here: accuracy and any earlier timing only)" \
                    if without_checkpoint(results.runs[key]) else ""
                print(f"[benchmark] {key}: done in an earlier run, reused{how}", flush=True)
            else:
                todo.append((entry, seed, digest))
    failures = []

    def finished(entry, seed, digest, outcome=None, error=None):
        key = f"{entry['label']}@{seed}"
        if error is not None:
            failures.append(f"{key}: {error}")
            results.fail(entry, seed, digest, error)
        else:
            results.add(entry, seed, digest, *outcome)
            print(f"[benchmark] {key}: done", flush=True)

    # entries that refer to another entry's checkpoint train after it (a second wave)
    waves = [[t for t in todo if not references(t[0])], [t for t in todo if references(t[0])]]
    for wave in waves:
        ready = []
        for entry, seed, digest in wave:
            try:
                ready.append((with_checkpoints(entry, seed, results), seed, digest, entry))
            except KeyError as e:
                finished(entry, seed, digest, error=f"its reference {e} has no finished training")
        _train_wave(plan, ready, output_dir, jobs, finished)
    return failures


def _train_wave(plan, todo, output_dir, jobs, finished):
    if jobs <= 1:  # in this process, at one thread like a worker (the timing afterwards keeps torch's setting)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for resolved, seed, digest, entry in todo:
                print(f"[benchmark] {entry['label']}@{seed}: training", flush=True)
                try:
                    finished(entry, seed, digest, train_entry(plan, resolved, seed, output_dir, digest))
                except Exception as e:
                    traceback.print_exc()
                    finished(entry, seed, digest, error=f"{type(e).__name__}: {e}")
        finally:
            torch.set_num_threads(threads)
        return
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_dies_with_parent) as pool:
        futures = {pool.submit(_train_in_worker, plan, r, s, output_dir, d): (e, s, d) for r, s, d, e in todo}
        print(f"[benchmark] training {len(todo)} (entry, seed) pairs, {jobs} at a time", flush=True)
        for future in as_completed(futures):
            entry, seed, digest = futures[future]
            try:
                finished(entry, seed, digest, future.result())
            except Exception as e:
                finished(entry, seed, digest, error=f"{type(e).__name__}: {e}")


#: What ``measure`` adds to a summary row (kept by ``--report_only``).
MEASURED_KEYS = ("infer_ms_per_batch", "infer_ratio", "infer_peak_bytes", "train_peak_bytes", "measure_error",
                 "train_peak_error")


def earlier_measurements(path, command, reused=False):
    """``({label: timing and memory figures}, command)`` of the last full run written to ``path``; nothing when
    there is none but trainings were ``reused`` from other results (a table put together from committed files, whose
    rows carry their own earlier timing)."""
    if not os.path.isfile(path):
        if reused:
            return {}, command
        raise ConfigError(f"--report_only: no results.json in {os.path.dirname(path) or '.'} to report from "
                          f"(nor --reuse_from to take trainings from)")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    measured = {row["label"]: {k: row[k] for k in MEASURED_KEYS if k in row} for row in saved.get("summary") or []}
    return measured, saved.get("command") or command


def _measure_at(threads, plan, runs, repeats):
    """:func:`measure` at ``threads`` torch threads (0: torch's setting), the setting restored afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return measure(plan, runs, repeats=repeats)
    finally:
        torch.set_num_threads(before)


def _note_reused_without_checkpoints(plan, good, measured, note):
    """Adds to ``measured`` the earlier timing of the rows reused without their checkpoints, and says so in the
    table's note (with the rows that have none)."""
    seed = plan["seeds"][0]
    reused = {r["label"]: r for r in good.values() if without_checkpoint(r) and r["seed"] == seed}
    if not reused:
        return note
    earlier = {label: r["reused_timing"] for label, r in reused.items() if r.get("reused_timing")}
    for label in reused:
        if label in earlier and not measured.get(label):
            measured[label] = dict(earlier[label])
    sources = ", ".join(sorted({os.path.relpath(r["reused_from"]) for r in reused.values()}))
    timed = sorted(label for label in reused if label in earlier)
    untimed = sorted(label for label in reused if label not in earlier)
    said = [f"Reused for their accuracy from {sources}, without their checkpoints:"]
    if timed:
        said.append(f"{', '.join(timed)} with the timing that run measured;")
    if untimed:
        said.append(f"not timed: {', '.join(untimed)}.")
    return (f"{note} " if note else "") + " ".join(said).rstrip(";") + ("" if untimed else ".")


def _note_mixed_cpus(good, note):
    """Says so in the table's note when its trainings ran on CPUs with different instruction sets (runs from before
    this was recorded are not counted)."""
    counts = {}
    for run in good.values():
        capability = (run.get("trained_on") or {}).get("cpu_capability")
        if capability:
            counts[capability] = counts.get(capability, 0) + 1
    if len(counts) < 2:
        return note
    said = (f"The trainings ran on CPUs with different instruction sets "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); a model whose CPU kernels depend on it "
            f"(NextItNet's convolutions) does not repeat its numbers across them.")
    return f"{note} {said}" if note else said


def claim_output_dir(output_dir, command):
    """Hold ``<output_dir>/.benchmark.lock`` while this benchmark runs, so that two benchmarks never share a folder:
    each would resume the other's interrupted entries and overwrite the other's ``results.json``. The lock is the
    operating system's (``flock``), released when the process ends however it ends, so it never goes stale. Returns
    the open lock file (keep it referenced), or None where ``flock`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(os.path.join(output_dir, ".benchmark.lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"--output_dir {output_dir} is in use by another benchmark ({holder}); wait for it to "
                          f"end, or give another --output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n")
    handle.flush()
    return handle


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quiet_known_noise()
    args, extra = build_parser().parse_known_args(argv)
    command = "python -m recbole_compress.benchmark " + " ".join(argv)
    try:
        plan = build_plan(args, extra)
        output_dir = args.output_dir or os.path.join("benchmark_results", plan["name"])
        check_plan(plan, output_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(output_dir, exist_ok=True)
    try:
        lock = claim_output_dir(output_dir, command)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return run_plan(args, plan, output_dir, command)
    finally:
        if lock is not None:
            lock.close()  # frees the folder for the next benchmark, also one in this process


def run_plan(args, plan, output_dir, command):
    """Train what the plan still needs (or, with ``--report_only``, nothing), time it and write the results."""
    results = Results(plan, os.path.join(output_dir, "results.json"))
    try:
        for folder in args.reuse_from:
            reused = results.reuse(folder, plan, training=not args.report_only)
            print(f"[benchmark] {reused} finished trainings reused from {folder}", flush=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    note = None
    if args.report_only:
        note = f"Table written again by `{command}` (no training, no timing)."
        try:
            measured, command = earlier_measurements(results.path, command, reused=bool(args.reuse_from))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        failures = []
    else:
        try:
            failures = train_all(plan, results, output_dir, args.jobs)
        except KeyboardInterrupt:
            print(f"\n[benchmark] interrupted: finished trainings are in {results.path}; an interrupted one "
                  f"continues from its last epoch when you run the same command again", file=sys.stderr)
            return 130
    labels = set(row_labels(plan))
    # the plan's seeds only: a folder may hold (or reuse) other seeds of an entry, e.g. after a one-seed probe
    good = {k: v for k, v in results.runs.items()
            if not v.get("error") and v["label"] in labels and v["seed"] in plan["seeds"]}
    if not args.report_only:
        print("[benchmark] measuring inference time and memory", flush=True)
        measured = _measure_at(args.timing_threads, plan, good, args.repeats)
        threads = args.timing_threads or torch.get_num_threads()
        note = f"Timed at {threads} torch thread{'s' if threads > 1 else ''}."
    note = _note_reused_without_checkpoints(plan, good, measured, note)
    note = _note_mixed_cpus(good, note)
    rows = summarise(plan, good, measured)
    text = write_outputs(plan, results.runs, rows, output_dir, command, results.test_users, note=note)
    print(text)
    print(f"[benchmark] wrote {output_dir}/results.json, results.md, pareto.png, pareto_inference.png")
    if failures:
        print("[benchmark] FAILED runs:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
