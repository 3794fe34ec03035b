"""Side-by-side benchmark: compressed models beside their uncompressed counterparts, on one split.

    python -m recbole_compress.benchmark --models SASRec,NextItNet,GRU4Rec --epochs 5
    python -m recbole_compress.benchmark --plan benchmarks/lsan_ml-100k.yaml
    python -m recbole_compress.benchmark --models LSAN,SASRec --dataset beauty --data_path ../datasets --use_context=False

Every entry trains with the same ``epochs`` / ``stopping_step`` and the same seeds, through the plugin's Config and
trainers (RecBole's data pipeline and full-ranking evaluator), and is reported with:

- test NDCG@10, HR@10, MRR@10 of the best validation epoch (mean and standard deviation over seeds);
- parameter count and state_dict bytes, and both as a ratio of the entry's counterpart;
- training seconds per epoch (mean over the epochs run);
- full-ranking inference time per batch of test users, timed in one process for every entry, interleaved with the
  counterpart's on the same users, and its ratio of the counterpart's;
- peak memory of one training step and of one inference batch, as the model's own allocations during the call
  (:func:`recbole_compress.profiling.peak_memory`), not the process's resident size.

Results go to ``<output_dir>/results.json``, ``results.md`` and ``pareto.png`` (NDCG@10 against parameters). A run
that is interrupted resumes: finished (entry, seed) trainings whose settings are unchanged are not redone.

A plan file (YAML) names entries with their own settings::

    dataset: ml-100k
    data_path: ~                # folder holding <dataset>/<dataset>.inter (not needed for ml-100k)
    epochs: 5
    stopping_step: 3
    seeds: [2020]
    counterpart: SASRec         # default counterpart label
    config: {}                  # overrides for every entry
    entries:
      - {label: SASRec, model: SASRec}
      - {label: LSAN-m3, model: LSAN, counterpart: SASRec, config: {compression_rate: 3}}

Optional model hooks: ``param_breakdown()`` (dict) and ``benchmark_report()`` (dict of extra figures) are recorded.
A trainer with ``phase_checkpoints = {"teacher": path}`` (teacher-student models) adds the row ``<label>/teacher``,
evaluated on the same test users; ``counterpart: teacher`` (or the model class's ``counterpart = "teacher"``)
compares the student with it.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from logging import getLogger

import torch
import yaml

from recbole_compress.checkpoint import to_plain
from recbole_compress.commandline import parse_value
from recbole_compress.errors import ConfigError
from recbole_compress.registry import get_model

METRICS = ("ndcg@10", "hit@10", "mrr@10")
RESULTS_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------------

def build_plan(args, extra):
    plan = {}
    if args.plan:
        if not os.path.isfile(args.plan):
            raise ConfigError(f"plan file {args.plan!r} does not exist (--plan)")
        with open(args.plan, encoding="utf-8") as f:
            plan = yaml.safe_load(f) or {}
        plan.setdefault("name", os.path.splitext(os.path.basename(args.plan))[0])
    if args.models:
        plan["entries"] = [{"label": m.strip(), "model": m.strip()} for m in args.models.split(",") if m.strip()]
    for key in ("dataset", "data_path", "epochs", "stopping_step", "counterpart", "infer_batch_users", "infer_batches"):
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
    plan.setdefault("dataset", "ml-100k")
    plan.setdefault("data_path", None)
    plan.setdefault("epochs", 5)
    plan.setdefault("stopping_step", 3)
    plan.setdefault("seeds", [2020])
    plan.setdefault("infer_batch_users", 256)
    plan.setdefault("infer_batches", 4)
    plan.setdefault("config_files", [])
    plan.setdefault("name", plan["dataset"])
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
        cp = entry.get("counterpart")
        if cp is None:
            cp = getattr(get_model(entry["model"]), "counterpart", None)
            if cp not in labels and cp != "teacher":
                cp = default_cp
        entry["counterpart"] = f"{entry['label']}/teacher" if cp == "teacher" else cp
    for file in plan["config_files"]:
        if not os.path.isfile(file):
            raise ConfigError(f"config file {file!r} does not exist")
    if plan["dataset"] != "ml-100k" and not plan["data_path"]:
        raise ConfigError(f"dataset {plan['dataset']!r} needs --data_path (a folder holding {plan['dataset']}/)")
    return plan


def entry_config(plan, entry, seed, output_dir):
    """The config_dict of one (entry, seed): the plan's settings that the entry's model reads (a plan-wide key such
    as ``hidden_size`` applies to the entries that have it), the entry's own settings, and the plan's budget."""
    from recbole_compress.commandline import keys_of_models

    own = dict(entry["config"])
    reads = keys_of_models([entry["model"]], dict(plan["config"], **own))[entry["model"]]
    cfg = {k: copy.deepcopy(v) for k, v in plan["config"].items() if k in reads}
    cfg.update(copy.deepcopy(own))
    cfg.update(
        {
            "epochs": plan["epochs"],
            "stopping_step": plan["stopping_step"],
            "seed": seed,
            "checkpoint_dir": os.path.join(output_dir, "checkpoints"),
            "show_progress": False,
        }
    )
    if plan["data_path"]:
        cfg["data_path"] = plan["data_path"]
    return cfg


def _hash(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def train_entry(plan, entry, seed, output_dir):
    """Train one (entry, seed), reload its best epoch, evaluate it on the test split; returns its records."""
    from recbole_compress.logs import start_logging
    from recbole_compress.profiling import count_parameters, state_dict_bytes
    from recbole_compress.run import build, fit_and_test, make_config

    cfg = entry_config(plan, entry, seed, output_dir)
    config = make_config(entry["model"], plan["dataset"], plan["config_files"] or None, cfg, read_cmd_line=False)
    start_logging(config)
    getLogger().info(f"benchmark: training {entry['label']} ({entry['model']}), seed {seed}")
    run = build(config)
    start = time.perf_counter()
    result = fit_and_test(run, saved=True, show_progress=False)
    fit_seconds = time.perf_counter() - start
    trainer, model = run.trainer, run.model
    epoch_times = trainer.epoch_seconds
    record = {
        "label": entry["label"],
        "model": entry["model"],
        "seed": seed,
        "test_result": {k: float(v) for k, v in result["test_result"].items()},
        "best_valid_score": float(result["best_valid_score"]),
        "epochs_run": len(epoch_times),
        "train_seconds_per_epoch": statistics.mean(epoch_times) if epoch_times else None,
        "fit_seconds": fit_seconds,
        "checkpoint": trainer.saved_model_file,
        "params": count_parameters(model),
        "state_dict_bytes": state_dict_bytes(model),
    }
    record.update(_model_extras(model))
    phases = dict(getattr(trainer, "phase_checkpoints", {}) or {})
    record["phase_checkpoints"] = phases
    records = [record]
    if phases.get("teacher"):
        records.append(_teacher_record(entry, seed, run, phases["teacher"]))
    return records


def _teacher_record(entry, seed, run, teacher_path):
    """The in-run teacher of a teacher-student entry, evaluated on the same test users."""
    from recbole_compress.profiling import count_parameters, state_dict_bytes
    from recbole_compress.run import restore
    from recbole_compress.trainer import Trainer

    teacher = restore(teacher_path, run.data, run.config["device"])
    teacher_test = Trainer(teacher.config, teacher.model).evaluate(run.data.test, load_best_model=False)
    info = getattr(run.trainer, "teacher_info", None) or {}
    record = {
        "label": f"{entry['label']}/teacher",
        "model": teacher.config["model"],
        "seed": seed,
        "test_result": {k: float(v) for k, v in teacher_test.items()},
        "best_valid_score": float(info["best_valid_score"]) if info.get("best_valid_score") is not None else None,
        "epochs_run": None,
        "train_seconds_per_epoch": info.get("train_seconds_per_epoch"),
        "checkpoint": teacher_path,
        "params": count_parameters(teacher.model),
        "state_dict_bytes": state_dict_bytes(teacher.model),
        "phase_checkpoints": {},
        "teacher_of": entry["label"],
    }
    record.update(_model_extras(teacher.model))
    return record


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

    # every row's own time, interleaved with its counterpart's on the same users
    counterpart_of = {r["label"]: r.get("counterpart") for r in rows}
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
# report
# ----------------------------------------------------------------------------------------------------------------

def summarise(plan, runs, measured):
    """One summary row per label: metrics over seeds, sizes, speeds, and ratios against the counterpart."""
    labels = []
    for entry in plan["entries"]:
        labels.append(entry["label"])
        if any(r["label"] == f"{entry['label']}/teacher" for r in runs.values()):
            labels.append(f"{entry['label']}/teacher")
    counterparts = {e["label"]: e["counterpart"] for e in plan["entries"]}
    rows = {}
    for label in labels:
        recs = [r for r in runs.values() if r["label"] == label]
        if not recs:
            continue
        row = {"label": label, "model": recs[0]["model"], "counterpart": counterparts.get(label), "seeds": len(recs)}
        for metric in METRICS:
            values = [r["test_result"].get(metric) for r in recs if r["test_result"].get(metric) is not None]
            if values:
                row[metric] = statistics.mean(values)
                row[metric + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        first = recs[0]
        for key in ("params", "state_dict_bytes", "param_breakdown", "benchmark_report", "checkpoint", "epochs_run"):
            if key in first:
                row[key] = first[key]
        epochs = [r["train_seconds_per_epoch"] for r in recs if r.get("train_seconds_per_epoch")]
        row["train_seconds_per_epoch"] = statistics.mean(epochs) if epochs else None
        row.update(measured.get(label, {}))
        rows[label] = row
    for row in rows.values():
        cp = rows.get(row.get("counterpart"))
        if cp is None or cp is row:
            continue
        row["params_ratio"] = row["params"] / cp["params"]
        row["bytes_ratio"] = row["state_dict_bytes"] / cp["state_dict_bytes"]
        if row.get("train_seconds_per_epoch") and cp.get("train_seconds_per_epoch"):
            row["train_time_ratio"] = row["train_seconds_per_epoch"] / cp["train_seconds_per_epoch"]
        for metric in METRICS:
            if row.get(metric) is not None and cp.get(metric):
                row[metric + "_ratio"] = row[metric] / cp[metric]
    return list(rows.values())


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(plan, rows):
    multi = len(plan["seeds"]) > 1
    head = ["model", "vs", "NDCG@10", "HR@10", "MRR@10", "params", "× params", "state_dict MB", "train s/epoch",
            "× train", "infer ms/batch", "× infer", "train peak MB", "infer peak MB", "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        def metric(m):
            if r.get(m) is None:
                return "–"
            return f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if multi else f"{r[m]:.4f}"

        mb = lambda b: "–" if b is None else f"{b / 2**20:.2f}"  # noqa: E731
        cells = [
            r["label"], r.get("counterpart") if r.get("counterpart") != r["label"] else "–",
            metric("ndcg@10"), metric("hit@10"), metric("mrr@10"),
            f"{r['params']:,}", _fmt(r.get("params_ratio"), 3), mb(r.get("state_dict_bytes")),
            _fmt(r.get("train_seconds_per_epoch"), 1), _fmt(r.get("train_time_ratio"), 2),
            _fmt(r.get("infer_ms_per_batch"), 1), _fmt(r.get("infer_ratio"), 2),
            mb(r.get("train_peak_bytes")), mb(r.get("infer_peak_bytes")), _fmt(r.get("epochs_run")),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def pareto_plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["params"], r["ndcg@10"], r["label"]) for r in rows if r.get("ndcg@10") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for x, y, label in points:
        ax.scatter([x], [y], s=30)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    # the Pareto front: no other model is both smaller and better
    front = sorted((x, y) for x, y, _ in points if not any(x2 <= x and y2 > y or x2 < x and y2 >= y for x2, y2, _ in points))
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(plan, runs, rows, output_dir, command):
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump({"version": RESULTS_VERSION, "plan": plan, "command": command, "runs": runs, "summary": rows},
                  f, indent=2, default=str)
    epochs = f"epochs={plan['epochs']}, stopping_step={plan['stopping_step']}, seeds={plan['seeds']}"
    text = (
        f"# Benchmark: {plan['name']} (dataset {plan['dataset']})\n\n"
        f"Command: `{command}`\n\nBudget: {epochs}. Test metrics at the best validation epoch "
        f"(full ranking, leave-one-out, RecBole's sequential protocol). × = ratio of the counterpart (vs). "
        f"Inference: {plan['infer_batches']} batches of {plan['infer_batch_users']} test users, timed in one "
        f"process interleaved with the counterpart. Peak MB: the model's own allocations during one training step / "
        f"one inference batch.\n\n" + markdown_table(plan, rows) + "\n"
    )
    extra = [r for r in rows if r.get("param_breakdown") or r.get("benchmark_report")]
    if extra:
        text += "\nModel reports:\n\n"
        for r in extra:
            if r.get("param_breakdown"):
                text += f"- {r['label']} parameters: {json.dumps(r['param_breakdown'])}\n"
            if r.get("benchmark_report"):
                text += f"- {r['label']} report: {json.dumps(r['benchmark_report'])}\n"
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(text)
    pareto_plot(rows, os.path.join(output_dir, "pareto.png"), f"{plan['name']}: NDCG@10 vs size")
    return text


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m recbole_compress.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", help="plan file (YAML) with entries and their settings")
    p.add_argument("--models", help="comma-separated models (each its own entry), instead of or over --plan entries")
    p.add_argument("--dataset", help="dataset name (default ml-100k)")
    p.add_argument("--data_path", help="folder holding <dataset>/<dataset>.inter (not needed for ml-100k)")
    p.add_argument("--epochs", type=int, help="epochs for every model (default 5)")
    p.add_argument("--stopping_step", type=int, help="early-stopping patience for every model (default 3)")
    p.add_argument("--seeds", help="comma-separated seeds (default 2020)")
    p.add_argument("--counterpart", help="default counterpart label (default: the first entry)")
    p.add_argument("--config_files", help="config files for every entry, separated by spaces")
    p.add_argument("--infer_batch_users", type=int, help="test users per timed inference batch (default 256)")
    p.add_argument("--infer_batches", type=int, help="timed inference batches (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats (median is reported)")
    p.add_argument("--output_dir", help="results folder (default benchmark_results/<plan name>)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, extra = build_parser().parse_known_args(argv)
    command = "python -m recbole_compress.benchmark " + " ".join(argv)
    try:
        plan = build_plan(args, extra)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output_dir = args.output_dir or os.path.join("benchmark_results", plan["name"])
    os.makedirs(output_dir, exist_ok=True)
    results_file = os.path.join(output_dir, "results.json")
    runs = {}
    if os.path.isfile(results_file):
        with open(results_file) as f:
            runs = json.load(f).get("runs", {})

    # every entry's configuration is checked before the first one trains
    try:
        from recbole_compress.commandline import check_override_keys
        from recbole_compress.preflight import check_data_rules_early
        from recbole_compress.run import make_config

        check_override_keys([e["model"] for e in plan["entries"]], plan["config"],
                            strict=plan["config"].get("strict_config_keys", True) is not False)
        for entry in plan["entries"]:
            config = make_config(entry["model"], plan["dataset"], plan["config_files"] or None,
                                 entry_config(plan, entry, plan["seeds"][0], output_dir), read_cmd_line=False)
            check_data_rules_early(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    failures = []
    for entry in plan["entries"]:
        for seed in plan["seeds"]:
            key = f"{entry['label']}@{seed}"
            settings = {"entry": entry, "plan": {k: plan[k] for k in ("dataset", "data_path", "epochs",
                                                                        "stopping_step", "config", "config_files")}}
            digest = _hash(settings)
            done = runs.get(key)
            if done and done.get("settings_hash") == digest and os.path.isfile(done.get("checkpoint", "")):
                print(f"[benchmark] {key}: done in an earlier run, reused", flush=True)
                continue
            print(f"[benchmark] {key}: training", flush=True)
            try:
                records = train_entry(plan, entry, seed, output_dir)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                traceback.print_exc()
                failures.append(f"{key}: {type(e).__name__}: {e}")
                runs[key] = {"label": entry["label"], "model": entry["model"], "seed": seed,
                             "error": f"{type(e).__name__}: {e}", "test_result": {}, "settings_hash": digest}
                continue
            for record in records:
                record["settings_hash"] = digest
                record["counterpart"] = entry["counterpart"] if record["label"] == entry["label"] else None
                runs[f"{record['label']}@{seed}"] = record
            with open(results_file, "w") as f:  # saved after every training: an interrupted run resumes here
                json.dump({"version": RESULTS_VERSION, "plan": plan, "runs": runs}, f, indent=2, default=str)

    good = {k: v for k, v in runs.items() if not v.get("error") and v["label"] in
            {e["label"] for e in plan["entries"]} | {e["label"] + "/teacher" for e in plan["entries"]}}
    print("[benchmark] measuring inference time and memory", flush=True)
    measured = measure(plan, good, repeats=args.repeats)
    rows = summarise(plan, good, measured)
    text = write_outputs(plan, runs, rows, output_dir, command)
    print(text)
    print(f"[benchmark] wrote {output_dir}/results.json, results.md, pareto.png")
    if failures:
        print("[benchmark] FAILED runs:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
