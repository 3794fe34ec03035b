"""The benchmark's summary: one row per model with metrics over seeds, sizes, speeds, ratios against the counterpart
with a 95 % confidence interval from per-user test scores, the verdict on a goal; the Markdown table and the plots.
"""
import json
import math
import os
import statistics

import numpy as np

from recbole_compress.intervals import ndcg_from_ranks, ratio_interval, verdict

METRICS = ("ndcg@10", "hit@10", "mrr@10")
RESULTS_VERSION = 2


def references(entry):
    """``{key: label}`` of an entry's settings that name another entry's checkpoint of the same seed, written
    ``"@<label>"`` (e.g. ``codebook_teacher: "@SASRec"``: codes fitted to the plain SASRec trained with that seed),
    or its in-run teacher's, written ``"@<label>/teacher"`` (``teacher_checkpoint: "@EODRec/teacher"``: an
    ablation distilled from the teacher that entry trained, not from a teacher of its own)."""
    return {k: v[1:] for k, v in (entry.get("config") or {}).items() if isinstance(v, str) and v.startswith("@")}


def referenced_entry(label):
    """The entry that trains a referenced row: ``<label>`` for ``<label>/teacher``, else the label itself."""
    return label[: -len("/teacher")] if label.endswith("/teacher") else label


def teacher_entry(entry):
    """The label of the plan entry whose checkpoint is this entry's teacher (``teacher_checkpoint: "@teacher"``),
    or None. Such a student's ``<label>/teacher`` row would repeat that entry's row (the same checkpoint on the same
    users): the table compares the student with the entry and leaves the repeat out."""
    return references(entry).get("teacher_checkpoint")


def row_labels(plan):
    """The labels a plan's table may show: its entries and their in-run teachers (not a teacher taken from another
    entry)."""
    labels = []
    for entry in plan["entries"]:
        labels.append(entry["label"])
        if teacher_entry(entry) is None:
            labels.append(f"{entry['label']}/teacher")
    return labels


def labels_in_order(plan, runs):
    """The table's rows: every entry, each followed by its in-run teacher when runs hold one."""
    present = {r["label"] for r in runs.values()}
    entries = {e["label"] for e in plan["entries"]}
    return [label for label in row_labels(plan) if label in entries or label in present]


def counterpart_row(entry):
    """An entry's counterpart row: its own, unless that is the repeat of a teacher entry (see ``teacher_entry``)."""
    cp = entry.get("counterpart")
    if cp is not None and cp == f"{entry['label']}/teacher" and teacher_entry(entry) is not None:
        return teacher_entry(entry)
    return cp


def _per_user(records):
    """``[seeds, users]`` per-user test NDCG@10 of a row's records (None if any record lacks its ranks)."""
    if not records or any(r.get("test_ranks") is None for r in records):
        return None
    return np.stack([ndcg_from_ranks(r["test_ranks"]) for r in records])


def _base_row(label, recs, counterpart):
    row = {"label": label, "model": recs[0]["model"], "counterpart": counterpart, "seeds": len(recs)}
    for metric in METRICS:
        values = [r["test_result"].get(metric) for r in recs if r["test_result"].get(metric) is not None]
        if values:
            row[metric] = statistics.mean(values)
            row[metric + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    first = recs[0]
    for key in ("params", "state_dict_bytes", "param_breakdown", "benchmark_report", "checkpoint"):
        if key in first:
            row[key] = first[key]
    row["epochs_run"] = [r.get("epochs_run") for r in recs]
    stops = [r.get("stopped_by") for r in recs]
    row["stopped_by"] = stops
    # a teacher loaded from a given checkpoint (e.g. "@teacher": another entry's) was not trained in this row
    row["converged"] = all(s in ("early stopping", "loaded") for s in stops)
    epochs = [r["train_seconds_per_epoch"] for r in recs if r.get("train_seconds_per_epoch")]
    row["train_seconds_per_epoch"] = statistics.mean(epochs) if epochs else None
    fits = [r["fit_seconds"] for r in recs if r.get("fit_seconds")]
    row["fit_seconds"] = sum(fits) if fits else None
    return row


def _compare(row, cp, recs, cp_recs, goal):
    row["params_ratio"] = row["params"] / cp["params"]
    row["bytes_ratio"] = row["state_dict_bytes"] / cp["state_dict_bytes"]
    if row.get("train_seconds_per_epoch") and cp.get("train_seconds_per_epoch"):
        row["train_time_ratio"] = row["train_seconds_per_epoch"] / cp["train_seconds_per_epoch"]
    for metric in METRICS:
        if row.get(metric) is not None and cp.get(metric):
            row[metric + "_ratio"] = row[metric] / cp[metric]
    a, b = _per_user(recs), _per_user(cp_recs)
    if a is None or b is None or a.shape[1] != b.shape[1]:
        return
    row["ndcg@10_ratio"] = float(a.mean() / b.mean())  # pooled over seeds and users (= ratio of the means)
    row["ndcg@10_ratio_ci_low"], row["ndcg@10_ratio_ci_high"] = ratio_interval(a, b)
    if goal is not None:
        row["goal"] = goal
        row["verdict"] = verdict(row["ndcg@10_ratio_ci_low"], row["ndcg@10_ratio_ci_high"], goal)


def summarise(plan, runs, measured):
    """One summary row per label (see the module docstring)."""
    entries = {e["label"]: e for e in plan["entries"]}
    by_label = {}
    for run in runs.values():
        by_label.setdefault(run["label"], []).append(run)
    rows = {}
    for label in labels_in_order(plan, runs):
        recs = sorted(by_label.get(label, []), key=lambda r: r["seed"])
        if recs:
            rows[label] = _base_row(label, recs, counterpart_row(entries.get(label, {})))
            rows[label].update(measured.get(label, {}))
    for label, row in rows.items():
        cp = rows.get(row.get("counterpart"))
        if cp is None or cp is row:
            continue
        entry = entries.get(label, {})
        goal = ((entry["goal"] if "goal" in entry else plan.get("goal")) or {}).get("ndcg@10_ratio")
        cp_recs = sorted(by_label[cp["label"]], key=lambda r: r["seed"])
        _compare(row, cp, sorted(by_label[label], key=lambda r: r["seed"]), cp_recs, goal)
    return list(rows.values())


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio_cell(r):
    if r.get("ndcg@10_ratio_ci_low") is None:
        return _fmt(r.get("ndcg@10_ratio"), 3)
    return f"{r['ndcg@10_ratio']:.3f} [{r['ndcg@10_ratio_ci_low']:.3f}, {r['ndcg@10_ratio_ci_high']:.3f}]"


def _epochs_cell(r):
    if r.get("stopped_by") and all(s == "loaded" for s in r["stopped_by"]):
        return "loaded (given checkpoint)"
    epochs = ", ".join(str(e) for e in r.get("epochs_run") or [] if e is not None) or "–"
    return epochs if r.get("converged", True) else f"{epochs} (not converged)"


def markdown_table(rows):
    head = ["model", "vs", "NDCG@10", "× NDCG@10 [95 % CI]", "goal", "HR@10", "MRR@10", "params", "× params",
            "train s/epoch", "× train", "infer ms/batch", "× infer", "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        def metric(m):
            if r.get(m) is None:
                return "–"
            return f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if r["seeds"] > 1 else f"{r[m]:.4f}"

        goal = f"≥ {r['goal']}: {r['verdict']}" if r.get("verdict") else "–"
        cells = [
            r["label"], r.get("counterpart") if r.get("counterpart") not in (None, r["label"]) else "–",
            metric("ndcg@10"), _ratio_cell(r), goal, metric("hit@10"), metric("mrr@10"),
            f"{r['params']:,}", _fmt(r.get("params_ratio"), 3),
            _fmt(r.get("train_seconds_per_epoch"), 1), _fmt(r.get("train_time_ratio"), 2),
            _fmt(r.get("infer_ms_per_batch"), 1), _fmt(r.get("infer_ratio"), 2), _epochs_cell(r),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def pareto_plot(rows, path, title, x_key="params", x_label="parameters (log scale)"):
    """NDCG@10 (with its seed spread) against ``x_key``, the Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r[x_key], r["ndcg@10"], r.get("ndcg@10_std", 0.0), r["label"]) for r in rows
              if r.get("ndcg@10") is not None and r.get(x_key)]
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for x, y, err, label in points:
        ax.errorbar([x], [y], yerr=[err], fmt="o", markersize=5, capsize=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = sorted((x, y) for x, y, _, _ in points
                   if not any(x2 <= x and y2 > y or x2 < x and y2 >= y for x2, y2, _, _ in points))
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test NDCG@10 (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(plan, runs, rows, output_dir, command, test_users=None, note=None):
    """``results.json`` (plan, every run with its per-user test ranks, summary rows), ``results.md`` and the plots
    (``note``: a sentence after the command, e.g. that the table was written again)."""
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump({"version": RESULTS_VERSION, "plan": plan, "command": command, "test_users": test_users,
                   "runs": runs, "summary": rows}, f, indent=1, default=str)
    budget = (f"protocol {plan.get('protocol_file')}: epochs ≤ {plan['epochs']}, early stopping on valid "
              f"{plan.get('valid_metric', 'NDCG@10')} with patience {plan['stopping_step']}, seeds {plan['seeds']}")
    labels = {r["label"] for r in rows}
    counted = [r for r in runs.values()  # the trainings this table summarises
               if not r.get("teacher_of") and r["label"] in labels and r.get("seed") in plan["seeds"]]
    hours = sum(r.get("fit_seconds") or 0 for r in counted) / 3600
    resumed = [r for r in counted if r.get("resumed_from")]
    hours_note = ""
    if resumed:  # a training resumed from a file written before 2026-12-02 does not know its time before the stop
        unknown = sum(1 for r in resumed if r.get("fit_seconds_before_resume") is None)
        untimed = f"; {unknown} from files that did not record the time before it, counted after it only" \
            if unknown else ""
        hours_note = f" ({len(resumed)} of them continued after a stop{untimed})"
    text = (
        f"# Benchmark: {plan['name']} (dataset {plan['dataset']})\n\nCommand: `{command}`"
        + (f" {note}" if note else "") + f"\n\n{budget}; training "
        f"took {hours:.1f} CPU-thread hours in all{hours_note}. Test metrics at the best validation epoch "
        f"(full ranking, leave-one-out), mean ± std over seeds. × NDCG@10: ratio of mean test NDCG@10 to the "
        f"counterpart's (vs), with a 95 % two-level bootstrap interval over seeds and the same test users "
        f"(recbole_compress/intervals.py); goal verdicts: met (lower bound ≥ goal), missed (upper bound < goal), "
        f"within noise. Inference: {plan['infer_batches']} batches of {plan['infer_batch_users']} test users, timed "
        f"in one process interleaved with the counterpart. Epochs: per seed; 'not converged' when the epoch cap, not "
        f"early stopping, ended a seed; 'loaded' for a teacher given as a checkpoint (not trained in that row)."
        f"\n\n" + markdown_table(rows) + "\n"
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
    pareto_plot(rows, os.path.join(output_dir, "pareto_inference.png"), f"{plan['name']}: NDCG@10 vs inference time",
                x_key="infer_ms_per_batch", x_label="full-ranking inference, ms per batch (log scale)")
    return text
