"""AdaRec's size/speed/accuracy curve: one point per efficiency weight beta, all with the same teacher and budget.

A teacher is trained once per dataset (exactly as an all-phases AdaRec run with the CPU preset would train it) and
reused through ``teacher_checkpoint`` by every beta, so each point costs a search and a retraining. Each point is a
benchmark entry (``recbole_compress.benchmark``: the student against the reused teacher, test metrics at the best
validation epoch, inference timed interleaved with the teacher in one process). Steps::

    # 1. the teacher (writes <output_dir>/teacher.json with its checkpoint)
    PYTHONPATH=. python benchmarks/adarec_beta_sweep.py teacher --dataset ml-100k --output_dir OUT
    # 2. the points; run it again with more betas: finished points are reused (each call trains the missing ones
    #    and re-times every point finished so far, interleaved with the teacher)
    PYTHONPATH=. python benchmarks/adarec_beta_sweep.py run --dataset ml-100k --output_dir OUT --betas 0,0.1
    # 3. the table (markdown) and the trade-off plot (NDCG@10 against the inference-time ratio, one point per beta)
    PYTHONPATH=. python benchmarks/adarec_beta_sweep.py report --output_dir OUT --plot docs/img/x.png
    # 4. a 95% interval of the student/teacher NDCG@10 ratio for some betas (per-user NDCG@10 on the test users,
    #    paired bootstrap of the ratio of means)
    PYTHONPATH=. python benchmarks/adarec_beta_sweep.py interval --output_dir OUT --betas 0.1

Datasets other than ml-100k need ``--data_path`` (a folder holding ``<dataset>/<dataset>.inter``). ``--config``
adds settings for every point (``key=value``, YAML values).
"""
import argparse
import json
import os
import sys

import yaml

PRESET = os.path.join("properties", "preset", "adarec_cpu.yaml")
BUDGET = {"epochs": 8, "stopping_step": 3, "teacher_epochs": 8, "search_epochs": 3}  # the benchmark plans' budget


def _base_config(args):
    cfg = {"teacher_epochs": BUDGET["teacher_epochs"], "search_epochs": BUDGET["search_epochs"]}
    if args.dataset != "ml-100k":
        cfg["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
    for item in args.config or []:
        key, _, value = item.partition("=")
        cfg[key] = yaml.safe_load(value)
    return cfg


def train_teacher(args):
    """Train the teacher of an AdaRec run with the preset (its teacher phase only) and record its checkpoint."""
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_compress.quick_start import build_config
    from recbole_compress.trainer.teacher import train_or_load_teacher

    torch.set_num_threads(1)
    cfg = dict(_base_config(args), epochs=BUDGET["epochs"], stopping_step=BUDGET["stopping_step"], seed=args.seed,
               checkpoint_dir=os.path.join(args.output_dir, "teacher"), show_progress=False)
    if args.data_path:
        cfg["data_path"] = args.data_path
    config = build_config("AdaRec", args.dataset, [PRESET], cfg, read_cmd_line=False)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    _, info = train_or_load_teacher(config, train_data, valid_data, "AdaRecNextItNetTeacher")
    record = {"dataset": args.dataset, "seed": args.seed, "checkpoint": os.path.abspath(info["checkpoint"]),
              "best_valid_score": float(info["best_valid_score"]),
              "train_seconds_per_epoch": info.get("train_seconds_per_epoch")}
    with open(os.path.join(args.output_dir, "teacher.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))


def _label(beta):
    return f"beta={beta:g}"


def write_plan(args, teacher):
    """The benchmark plan of the sweep: one entry per beta, all reusing ``teacher``'s checkpoint."""
    config = dict(_base_config(args), teacher_checkpoint=teacher["checkpoint"])
    entries = [{"label": _label(float(b)), "model": "AdaRec", "config": {"search_efficiency_beta": float(b)}}
               for b in args.betas.split(",")]
    plan = {"dataset": args.dataset, "epochs": BUDGET["epochs"], "stopping_step": BUDGET["stopping_step"],
            "seeds": [args.seed], "config_files": [PRESET], "config": config, "entries": entries}
    path = os.path.join(args.output_dir, "plan.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(plan, f, sort_keys=False)
    return path


def run_points(args):
    from recbole_compress import benchmark

    with open(os.path.join(args.output_dir, "teacher.json")) as f:
        teacher = json.load(f)
    plan = write_plan(args, teacher)
    argv = ["--plan", plan, "--output_dir", args.output_dir]
    if args.data_path:
        argv += ["--data_path", args.data_path]
    return benchmark.main(argv)


def sweep_rows(results):
    """One row per beta (sorted) from a benchmark ``results.json``: genotype, sizes, speed and accuracy ratios."""
    plan, runs = results["plan"], results["runs"]
    summary = {row["label"]: row for row in results.get("summary", [])}
    rows = []
    for entry in plan["entries"]:
        run = next((r for r in runs.values() if r["label"] == entry["label"] and not r.get("error")), None)
        teacher = next((r for r in runs.values() if r["label"] == entry["label"] + "/teacher"), None)
        if run is None or teacher is None:
            continue
        s = summary.get(entry["label"], {})
        rows.append({
            "beta": entry["config"]["search_efficiency_beta"],
            "genotype": (run.get("benchmark_report") or {}).get("genotype"),
            "conv_ops_per_cell": (run.get("benchmark_report") or {}).get("conv_ops_per_cell"),
            "cell_params": (run.get("param_breakdown") or {}).get("cells"),
            "params": run["params"], "teacher_params": teacher["params"],
            "params_ratio": run["params"] / teacher["params"],
            "infer_ratio": s.get("infer_ratio"),
            "ndcg": run["test_result"]["ndcg@10"], "teacher_ndcg": teacher["test_result"]["ndcg@10"],
            "ndcg_ratio": run["test_result"]["ndcg@10"] / teacher["test_result"]["ndcg@10"],
            "fit_seconds": run.get("fit_seconds"),
        })
    return sorted(rows, key=lambda r: r["beta"])


def report(args):
    with open(os.path.join(args.output_dir, "results.json")) as f:
        results = json.load(f)
    rows = sweep_rows(results)
    print("| beta | genotype | convs/cell | cell params | params | × params | × infer | NDCG@10 | teacher | × NDCG@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        infer = f"{r['infer_ratio']:.2f}" if r["infer_ratio"] is not None else "–"
        print(f"| {r['beta']:g} | `{r['genotype']}` | {r['conv_ops_per_cell']} | {r['cell_params']:,} | "
              f"{r['params']:,} | {r['params_ratio']:.3f} | {infer} | {r['ndcg']:.4f} | {r['teacher_ndcg']:.4f} | "
              f"{r['ndcg_ratio']:.2f} |")
    if args.plot:
        plot(rows, args.plot, f"AdaRec beta sweep, {results['plan']['dataset']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def plot(rows, path, title):
    """NDCG@10 ratio against the inference-time ratio (both against the teacher), one labelled point per beta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["infer_ratio"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["infer_ratio"] for r in pts], [r["ndcg_ratio"] for r in pts], "o-", color="tab:blue")
    for r in pts:
        ax.annotate(f"β={r['beta']:g}\n{r['conv_ops_per_cell']} conv, ×{r['params_ratio']:.2f} params",
                    (r["infer_ratio"], r["ndcg_ratio"]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.axhline(0.9, color="grey", ls="--", lw=0.8)
    ax.axvline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("inference time / teacher's (full ranking, interleaved)")
    ax.set_ylabel("test NDCG@10 / teacher's")
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def per_user_ndcg(model, test_data, k=10):
    """NDCG@k of every test user under RecBole's full ranking (history items and the padding item excluded)."""
    import torch

    model.eval()
    values = []
    with torch.no_grad():
        for interaction, history_index, positive_u, positive_i in test_data:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -float("inf")
            if history_index is not None:
                scores[history_index] = -float("inf")
            target = scores[positive_u, positive_i]
            rank = (scores[positive_u] > target[:, None]).sum(1)
            gain = torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2), torch.zeros_like(rank, dtype=torch.double))
            values.append(torch.zeros(len(interaction), dtype=torch.double).index_add_(0, positive_u, gain))
    return torch.cat(values)


def paired_ratio_interval(student, teacher, n_boot=2000, seed=0):
    """``(ratio of means, 2.5% and 97.5% percentiles)`` of ``mean(student) / mean(teacher)`` over users resampled
    with replacement (the same users for both)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(student), (n_boot, len(student)), generator=g)
    ratios = student[idx].mean(1) / teacher[idx].mean(1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype)).tolist()
    return float(student.mean() / teacher.mean()), low, high


def interval(args):
    import torch

    from recbole_compress.quick_start import load_data_and_model
    from recbole_compress.trainer.teacher import load_teacher

    torch.set_num_threads(1)
    with open(os.path.join(args.output_dir, "results.json")) as f:
        runs = json.load(f)["runs"]
    out = {}
    for beta in args.betas.split(","):
        run = next(r for r in runs.values() if r["label"] == _label(float(beta)) and not r.get("error"))
        _, student, _, train, _, test = load_data_and_model(run["checkpoint"])
        teacher, _ = load_teacher(run["phase_checkpoints"]["teacher"], train._dataset)
        s, t = per_user_ndcg(student, test), per_user_ndcg(teacher, test)
        ratio, low, high = paired_ratio_interval(s, t)
        out[beta] = {"users": len(s), "student_ndcg": float(s.mean()), "teacher_ndcg": float(t.mean()),
                     "ratio": ratio, "ratio_95": [low, high]}
        print(f"beta={beta}: {len(s)} users, student {s.mean():.4f}, teacher {t.mean():.4f}, ratio {ratio:.3f} "
              f"[{low:.3f}, {high:.3f}]", flush=True)
    with open(os.path.join(args.output_dir, "intervals.json"), "w") as f:
        json.dump(out, f, indent=2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=("teacher", "run", "report", "interval"))
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data_path")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--betas", default="0,0.03,0.1,0.3,1")
    p.add_argument("--config", nargs="*", help="key=value settings for every point")
    p.add_argument("--plot", help="report: write the trade-off plot here (PNG)")
    p.add_argument("--json", help="report: write the rows here")
    args = p.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.step == "teacher":
        return train_teacher(args)
    if args.step == "run":
        return run_points(args)
    if args.step == "interval":
        return interval(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
