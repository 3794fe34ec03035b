"""Top-N generation time of trained CpRec models against the uncompressed NextItNet (the paper's "inference speedup",
measured on the generation of the top-N items), next to full-ranking time, interleaved on the same test users.

    PYTHONPATH=. python benchmarks/cprec_topn_timing.py <benchmark output dir> [--n 10] [--users 256] [--batches 4]

Reads the checkpoints listed in <dir>/results.json (written by ``python -m recbole_compress.benchmark``). The
uncompressed model ranks by its logits (``topk`` over all items); CpRec uses ``AdaptiveSoftmax.topk`` (exact, with
the early stop over tail blocks). Both return the same kind of answer (the N best items per user, history not
excluded, as in the paper).
"""
import argparse
import json
import os

import torch

from recbole_compress.benchmark import _load_for_measurement
from recbole_compress.profiling import interleaved_times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results_dir")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with open(os.path.join(args.results_dir, "results.json")) as f:
        runs = json.load(f)["runs"]
    loaded = {}
    for run in runs.values():
        if run.get("model") == "CpRec" and run.get("checkpoint") and not run.get("error"):
            loaded[run["label"]] = _load_for_measurement(run["checkpoint"], None, args.users, args.batches)
    base = "NextItNet-uncompressed"

    def generate(item):
        model, batches = item["model"], item["batches"]

        def run():
            with torch.no_grad():
                for batch in batches:
                    h = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
                    if model.adaptive_output:
                        model.output_layer.topk(h, args.n)
                    else:
                        scores = model._full_logits(h)
                        scores[:, 0] = float("-inf")
                        scores.topk(args.n, dim=1)
        return run

    def full_rank(item):
        model, batches = item["model"], item["batches"]

        def run():
            with torch.no_grad():
                for batch in batches:
                    model.full_sort_predict(batch)
        return run

    print(f"| model | top-{args.n} ms/batch | × top-{args.n} | full-ranking ms/batch | × full ranking |")
    print("|---|---|---|---|---|")
    for label, item in loaded.items():
        if label == base:
            continue
        top = interleaved_times({label: generate(item), base: generate(loaded[base])}, repeats=args.repeats)
        full = interleaved_times({label: full_rank(item), base: full_rank(loaded[base])}, repeats=args.repeats)
        n = len(item["batches"])
        print(f"| {label} | {1000 * top[label] / n:.1f} (base {1000 * top[base] / n:.1f}) | {top[label] / top[base]:.2f} "
              f"| {1000 * full[label] / n:.1f} (base {1000 * full[base] / n:.1f}) | {full[label] / full[base]:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
