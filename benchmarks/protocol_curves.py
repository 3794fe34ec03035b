"""Validation NDCG@10 against wall time, per training setting: the measurement behind the benchmark protocol.

Trains one model at one (train_batch_size, learning_rate) with validation after every epoch and early stopping on
valid NDCG@10 (patience ``--patience``), until early stopping, ``--max_epochs`` or ``--max_minutes``; one thread.
Every epoch's record (epoch, wall and CPU seconds since the start including validation, valid NDCG@10) is appended to
``<output>`` as one JSON line, so an interrupted sweep keeps what it measured.

    PYTHONPATH=. python benchmarks/protocol_curves.py --model SASRec --dataset ml-100k --batch 256 --lr 0.002 \
        --output protocol/curves.jsonl
    PYTHONPATH=. python benchmarks/protocol_curves.py --model CpRec --dataset beauty --data_path <datasets> \
        --batch 2048 --lr 0.001 --output protocol/curves.jsonl --set block_num=2 --set adaptive_input=False ...

The summary (``--summarise protocol/curves.jsonl``) gives, per setting, the best validation score, the epoch and the
wall time at which it was reached, the wall time to come within 2 % of the best score any setting reached, and the
share of the curve's best score that early stopping with patience 3 or 5 would have kept.
"""
import argparse
import json
import os
import sys
import time

import torch
from recbole.utils import early_stopping


class _Budget(Exception):
    """The curve's time budget ran out."""


def run_setting(args):
    from recbole_compress.quick_start import objective_function

    config = {
        "model": args.model,
        "dataset": args.dataset,
        "train_batch_size": args.batch,
        "learning_rate": args.lr,
        "epochs": args.max_epochs,
        "stopping_step": args.patience,
        "valid_metric": "NDCG@10",
        "seed": args.seed,
        "show_progress": False,
        "checkpoint_dir": os.path.join(os.path.dirname(os.path.abspath(args.output)), "checkpoints"),
    }
    if args.data_path:
        config["data_path"] = args.data_path
        config["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
    for item in args.set or []:
        key, value = item.split("=", 1)
        config[key] = _value(value)
    setting = {"model": args.model, "dataset": args.dataset, "batch": args.batch, "lr": args.lr,
               "label": args.label or args.model, "seed": args.seed}
    start, cpu_start = time.perf_counter(), time.process_time()

    def callback(report):
        # cpu_seconds (user + system time of this one-thread process) is the figure that compares settings: unlike
        # wall time it does not grow when other processes share the cores
        record = dict(setting, epoch=report["epoch"], seconds=time.perf_counter() - start,
                      cpu_seconds=time.process_time() - cpu_start, valid_ndcg=report["ndcg@10"],
                      train_loss=report.get("train_loss"))
        with open(args.output, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        if record["cpu_seconds"] > 60 * args.max_minutes and not report["last_validation"]:
            raise _Budget()

    try:
        objective_function(config_dict=config, callback_fn=callback, evaluate_test=False, saved=False)
    except _Budget:
        print(f"stopped at the {args.max_minutes}-minute cap", flush=True)


def _value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def summarise(path, within=0.02):
    records = [json.loads(line) for line in open(path)]
    groups = {}
    for r in records:
        key = (r["dataset"], r["label"], r["batch"], r["lr"], r.get("seed"))
        groups.setdefault(key, []).append(r)
    by_dataset = {}
    for key, recs in groups.items():
        by_dataset.setdefault((key[0], key[1]), []).append((key, recs))
    for (dataset, label), settings in sorted(by_dataset.items()):
        top = max(r["valid_ndcg"] for _, recs in settings for r in recs)
        print(f"\n{dataset} / {label}: best valid NDCG@10 over all settings {top:.4f}")
        print("| batch | lr | epochs run | best valid | at epoch | at CPU min | CPU min to within 2 % of the top | "
              "kept by patience 3 / 5 |")
        print("|---|---|---|---|---|---|---|---|")
        for key, recs in sorted(settings, key=lambda s: (s[0][2], s[0][3])):
            best = max(recs, key=lambda r: r["valid_ndcg"])
            near = next((r for r in recs if r["valid_ndcg"] >= (1 - within) * top), None)
            print(f"| {key[2]} | {key[3]} | {len(recs)} | {best['valid_ndcg']:.4f} | {best['epoch']} | "
                  f"{best['cpu_seconds'] / 60:.1f} | {'%.1f' % (near['cpu_seconds'] / 60) if near else 'not reached'} | "
                  f"{kept_by_patience(recs, 3):.3f} / {kept_by_patience(recs, 5):.3f} |")


def kept_by_patience(records, patience):
    """The best validation score early stopping with ``stopping_step = patience`` would have kept, as a fraction of the
    curve's best, by RecBole's own rule (``recbole.utils.early_stopping``: a score equal to the best counts as an
    improvement, and training stops when more than ``patience`` validations in a row bring none)."""
    scores = [r["valid_ndcg"] for r in sorted(records, key=lambda r: r["epoch"])]
    best, waited = float("-inf"), 0
    for score in scores:
        best, waited, stop, _ = early_stopping(score, best, waited, patience, bigger=True)
        if stop:
            break
    return best / max(scores)


def plot(path, out):
    """Validation NDCG@10 against CPU minutes, one panel per (dataset, model), one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in open(path)]
    panels = sorted({(r["dataset"], r["label"]) for r in records})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (dataset, label) in zip(axes[0], panels):
        settings = sorted({(r["batch"], r["lr"]) for r in records if (r["dataset"], r["label"]) == (dataset, label)})
        for batch, lr in settings:
            recs = [r for r in records if (r["dataset"], r["label"], r["batch"], r["lr"]) == (dataset, label, batch, lr)]
            recs.sort(key=lambda r: r["epoch"])
            ax.plot([r["cpu_seconds"] / 60 for r in recs], [r["valid_ndcg"] for r in recs], marker=".",
                    label=f"batch {batch}, lr {lr}")
        ax.set_title(f"{label} on {dataset}", fontsize=9)
        ax.set_xlabel("CPU minutes (one thread)")
        ax.set_ylabel("valid NDCG@10")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--label")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data_path")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max_epochs", type=int, default=300)
    p.add_argument("--max_minutes", type=float, default=30)
    p.add_argument("--set", action="append", help="key=value config override (repeatable)")
    p.add_argument("--output")
    p.add_argument("--summarise", help="a curves file: print the table per (dataset, model)")
    p.add_argument("--plot", help="with --summarise: also draw the curves into this PNG")
    args = p.parse_args(argv)
    if args.summarise:
        summarise(args.summarise)
        if args.plot:
            plot(args.summarise, args.plot)
        return 0
    torch.set_num_threads(1)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    run_setting(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
