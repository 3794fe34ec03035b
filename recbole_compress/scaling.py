"""Sequence-length scaling: forward time and peak memory of sequential models on synthetic sequences.

    python -m recbole_compress.scaling --models PKMACT,SASRec --lengths 50,200,800,1600
    python -m recbole_compress.scaling --models PKMACT,SASRec --lengths 64,256,1024 --batch_size 16 \\
        --hidden_size=64 --n_layers=2 --output_dir scaling_out

For every length ``L`` each model is built with ``MAX_ITEM_LIST_LENGTH = L`` (its own YAML defaults, then the
``--key=value`` overrides, the same for every model, so widths and depths match), and fed the same batch of random
full-length sequences. Measured, in one process:

- forward time: ``model.forward(item_seq, item_seq_len)`` in eval mode without gradients (the sequence encoder and
  the gather of the last position; the item scoring does not depend on ``L``), the models interleaved on the same
  batch (:func:`recbole_compress.profiling.interleaved_times`), median of ``--repeats`` runs;
- peak memory of the same forward: the model's own allocations during the call
  (:func:`recbole_compress.profiling.peak_memory`), not the process's resident size;
- with ``--train_step``, also the peak memory of one training step (forward, loss over all items, backward).

Times are only meaningful as ratios (``--reference``, default the second model, e.g. SASRec) and as growth between
lengths. Writes ``scaling.json``, ``scaling.md`` and ``scaling.png`` (time and memory against ``L``, log-log) into
``--output_dir``. No dataset is read: the models are built on a stand-in dataset with ``--n_items`` items.
"""
import argparse
import json
import os
import sys

import torch

from recbole_compress.errors import ConfigError
from recbole_compress.registry import get_model


class SyntheticDataset:
    """Stands in for a RecBole dataset when only the catalogue size matters (model construction)."""

    def __init__(self, n_items, n_users=1):
        self.n_items = n_items
        self.n_users = n_users

    def num(self, field):
        return self.n_users if "user" in field.lower() else self.n_items


def build_model(model, max_seq_length, n_items=1000, config_dict=None, seed=2020):
    """A model built from its YAML defaults plus ``config_dict`` (no dataset read), with ``MAX_ITEM_LIST_LENGTH``
    = ``max_seq_length``; returns ``(model, config)``."""
    from recbole.utils import init_seed

    from recbole_compress.config import Config
    from recbole_compress.run import prepare_config

    cfg = {"MAX_ITEM_LIST_LENGTH": max_seq_length, "device": "cpu", "use_gpu": False}
    cfg.update(config_dict or {})
    config = Config(model=model, dataset="synthetic", config_dict=cfg, read_cmd_line=False)
    config["device"] = torch.device("cpu")
    prepare_config(config)  # e.g. AdaRec's genotype from adarec_arch_file
    init_seed(seed, True)
    return get_model(config["model"])(config, SyntheticDataset(n_items)), config


def synthetic_batch(batch_size, length, n_items, seed=0, full=True):
    """Random item ids in ``[1, n_items)`` ``[B, L]`` and their lengths (all ``L`` if ``full``)."""
    generator = torch.Generator().manual_seed(seed)
    item_seq = torch.randint(1, n_items, (batch_size, length), generator=generator)
    if full:
        lengths = torch.full((batch_size,), length, dtype=torch.long)
    else:
        lengths = torch.randint(1, length + 1, (batch_size,), generator=generator)
        item_seq = item_seq.masked_fill(torch.arange(length)[None, :] >= lengths[:, None], 0)
    return item_seq, lengths


def _train_step_peak(model, item_seq, lengths, targets):
    from recbole_compress.profiling import peak_memory

    model.train()
    logits_weight = model.item_embedding.weight

    def step():
        model.zero_grad(set_to_none=True)
        out = model.forward(item_seq, lengths)
        loss = torch.nn.functional.cross_entropy(out @ logits_weight.t(), targets)
        loss.backward()

    step()
    _, peak = peak_memory(step)
    model.zero_grad(set_to_none=True)
    model.eval()
    return peak


def run_scaling(models, lengths, batch_size=16, n_items=1000, repeats=5, config_dict=None, train_step=False,
                log=print):
    """Measure every model at every length; returns a list of records (one per model and length)."""
    from recbole_compress.profiling import count_parameters, interleaved_times, peak_memory

    records = []
    for length in lengths:
        item_seq, item_len = synthetic_batch(batch_size, length, n_items, seed=length)
        targets = torch.randint(1, n_items, (batch_size,), generator=torch.Generator().manual_seed(length + 1))
        built = {}
        for name in models:
            model, _ = build_model(name, length, n_items, config_dict)
            built[name] = model.eval()

        def forward_fn(model):
            def run():
                with torch.no_grad():
                    model.forward(item_seq, item_len)

            return run

        times = interleaved_times({name: forward_fn(m) for name, m in built.items()}, repeats=repeats, warmup=1)
        for name, model in built.items():
            with torch.no_grad():
                _, peak = peak_memory(model.forward, item_seq, item_len)
            record = {
                "model": name,
                "length": length,
                "batch_size": batch_size,
                "forward_ms": 1000 * times[name],
                "forward_peak_bytes": peak,
                "params": count_parameters(model),
            }
            if train_step:
                record["train_peak_bytes"] = _train_step_peak(model, item_seq, item_len, targets)
            records.append(record)
            log(
                f"L={length:5d} {name:10s} forward {record['forward_ms']:9.2f} ms  peak "
                f"{peak / 2 ** 20:9.2f} MiB" + (
                    f"  train peak {record['train_peak_bytes'] / 2 ** 20:9.2f} MiB" if train_step else ""
                )
            )
        del built
    return records


def add_ratios(records, reference):
    """Ratios against ``reference`` at the same length, and growth of each model between consecutive lengths."""
    by_key = {(r["model"], r["length"]): r for r in records}
    keys = ["forward_ms", "forward_peak_bytes", "train_peak_bytes"]
    for r in records:
        ref = by_key.get((reference, r["length"]))
        if ref is not None:
            for key in keys:
                if r.get(key) is not None and ref.get(key):
                    r[f"{key}_ratio"] = r[key] / ref[key]
    for model in {r["model"] for r in records}:
        rows = sorted((r for r in records if r["model"] == model), key=lambda r: r["length"])
        for prev, cur in zip(rows, rows[1:]):
            for key in keys:
                if cur.get(key) is not None and prev.get(key):
                    cur[f"{key}_growth"] = cur[key] / prev[key]
            cur["growth_from"] = prev["length"]
    return records


def growth(records, model, key, start, end):
    """``key`` of ``model`` at length ``end`` divided by its value at ``start`` (None if either is missing)."""
    values = {r["length"]: r.get(key) for r in records if r["model"] == model}
    if values.get(start) and values.get(end) is not None:
        return values[end] / values[start]
    return None


def markdown(records, reference):
    mib = 2 ** 20
    train = any("train_peak_bytes" in r for r in records)
    head = "| L | model | forward ms | × " + reference + " | growth | forward peak MiB | × " + reference + " | growth |"
    sep = "|---|---|---|---|---|---|---|---|"
    if train:
        head += " train-step peak MiB | × " + reference + " |"
        sep += "---|---|"
    lines = [head, sep]

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    for r in sorted(records, key=lambda r: (r["length"], r["model"] != reference, r["model"])):
        line = (
            f"| {r['length']} | {r['model']} | {f(r['forward_ms'], '.2f')} | {f(r.get('forward_ms_ratio'), '.3f')} | "
            f"{f(r.get('forward_ms_growth'), '.2f')} | {f(r['forward_peak_bytes'] / mib, '.2f')} | "
            f"{f(r.get('forward_peak_bytes_ratio'), '.3f')} | {f(r.get('forward_peak_bytes_growth'), '.2f')} |"
        )
        if train:
            tp = r.get("train_peak_bytes")
            line += f" {f(tp / mib if tp else None, '.2f')} | {f(r.get('train_peak_bytes_ratio'), '.3f')} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(records, path, title="Forward pass against sequence length"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in sorted({r["model"] for r in records}):
        rows = sorted((r for r in records if r["model"] == model), key=lambda r: r["length"])
        xs = [r["length"] for r in rows]
        (line,) = axes[0].plot(xs, [r["forward_ms"] for r in rows], marker="o", label=model)
        color = line.get_color()
        axes[1].plot(xs, [r["forward_peak_bytes"] / 2 ** 20 for r in rows], marker="o", color=color,
                     label=f"{model} (forward)")
        if any(r.get("train_peak_bytes") for r in rows):
            axes[1].plot(xs, [r.get("train_peak_bytes", float("nan")) / 2 ** 20 for r in rows], marker="x",
                         linestyle="--", color=color, label=f"{model} (train step)")
    for ax, ylabel in zip(axes, ("forward time (ms per batch)", "peak memory (MiB, model's allocations)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    batch = records[0]["batch_size"] if records else "?"
    fig.suptitle(f"{title} (batch {batch})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_compress.scaling",
        description="Forward time and peak memory of sequential models against the sequence length "
        "(synthetic sequences). Extra --key=value pairs override every model's config.",
    )
    parser.add_argument("--models", default="PKMACT,SASRec", help="comma-separated model names")
    parser.add_argument("--lengths", default="50,200,800,1600", help="comma-separated sequence lengths")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--n_items", type=int, default=1000, help="catalogue size of the stand-in dataset")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model and length (median)")
    parser.add_argument("--reference", default=None, help="model the ratios are taken against (default: the last)")
    parser.add_argument("--train_step", action="store_true", help="also measure a training step's peak memory")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    parser.add_argument("--output_dir", default="scaling_results")
    return parser


def main(argv=None):
    from recbole_compress.commandline import parse_value

    args, extra = build_parser().parse_known_args(argv)
    overrides = {}
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"unrecognised argument {item!r}: model settings are given as --key=value")
        key, value = item[2:].split("=", 1)
        overrides[key] = parse_value(value)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        get_model(m)  # an unknown name fails before anything runs
    lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    if not models or not lengths or min(lengths) < 1:
        raise ConfigError("--models and --lengths must name at least one model and positive lengths")
    reference = args.reference or models[-1]
    if args.threads:
        torch.set_num_threads(args.threads)
    records = run_scaling(models, lengths, args.batch_size, args.n_items, args.repeats, overrides, args.train_step)
    add_ratios(records, reference)
    os.makedirs(args.output_dir, exist_ok=True)
    command = "python -m recbole_compress.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"command": command, "reference": reference, "overrides": overrides,
               "threads": torch.get_num_threads(), "records": records}
    with open(os.path.join(args.output_dir, "scaling.json"), "w") as f:
        json.dump(summary, f, indent=2)
    text = f"Command: `{command}` (torch threads: {torch.get_num_threads()})\n\n" + markdown(records, reference)
    with open(os.path.join(args.output_dir, "scaling.md"), "w") as f:
        f.write(text)
    plot(records, os.path.join(args.output_dir, "scaling.png"))
    print(text)
    return summary


if __name__ == "__main__":
    main()
