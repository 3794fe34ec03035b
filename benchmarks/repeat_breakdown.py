"""Test NDCG@10 of a benchmark row against its counterpart, split by whether the test item repeats an item of the
user's history.

    PYTHONPATH=. python benchmarks/repeat_breakdown.py <results.json> [<results.json> ...] --label EODRec \
        [--counterpart EODRec/teacher] [--seeds 2020,2021]

The question it answers (issue 18): on a catalogue where many test items are repeats (tmall: about half), does a
compressed model lose its accuracy on the repeats (telling an item of the history apart from its neighbours, which a
student scoring from shared codewords may find hard) or on new items? Rows are read from the benchmark's
``results.json`` files (several may be given, e.g. one per seed; their runs are merged) and must share the test
users; the histories come from the dataset rebuilt from the first of those runs' checkpoints found on this machine.
Each group's ratio has the benchmark's interval (:func:`recbole_compress.intervals.ratio_interval`, over seeds and
users), and so has the last row, all users: the overall ratio against any row given as --counterpart.
"""
import argparse
import json
import os

import numpy as np

from recbole_compress.intervals import ndcg_from_ranks, ratio_interval


def group_breakdown(ranks, counterpart_ranks, groups, names, replicates=2000):
    """Per group of test users: their number and share, both models' mean NDCG@10 and the ratio with its interval.

    ``ranks``, ``counterpart_ranks``: ``[seeds, users]`` 0-based ranks of the test item (-1: not in the top 10);
    ``groups``: one integer per user indexing ``names``."""
    a, b = ndcg_from_ranks(np.atleast_2d(ranks)), ndcg_from_ranks(np.atleast_2d(counterpart_ranks))
    groups = np.asarray(groups)
    rows = []
    for group, name in enumerate(names):
        users = groups == group
        if not users.any():
            continue
        mean_a, mean_b = float(a[:, users].mean()), float(b[:, users].mean())
        low, high = ratio_interval(a[:, users], b[:, users], replicates=replicates)
        rows.append({"group": name, "users": int(users.sum()), "share": float(users.mean()), "ndcg@10": mean_a,
                     "counterpart_ndcg@10": mean_b, "ratio": mean_a / mean_b if mean_b else float("nan"),
                     "ci": [low, high]})
    return rows


def load_runs(paths):
    """The runs of several ``results.json`` files (by ``label@seed``) and their common test users."""
    runs, users = {}, None
    for path in paths:
        with open(path) as f:
            results = json.load(f)
        if users is not None and results["test_users"] != users:
            raise SystemExit(f"{path} was scored on other test users than {paths[0]}: not the same plan and split")
        users = results["test_users"]
        runs.update(results["runs"])
    return runs, users


def targets_and_repeats(restored):
    """The test items of a restored run (:func:`recbole_compress.run.restore`) in the test loader's order, and one
    bool per test user: is the test item in the user's history?"""
    import torch

    item_field = restored.config["ITEM_ID_FIELD"]
    history_field = item_field + restored.config["LIST_SUFFIX"]
    targets = torch.cat([batch[0][item_field] for batch in restored.data.test])
    histories = torch.cat([batch[0][history_field] for batch in restored.data.test])
    return targets, (histories == targets.unsqueeze(1)).any(dim=1).numpy()


def repeats_of(checkpoint):
    """One bool per test user (in the loader's order): is the test item in the user's history?"""
    from recbole_compress.run import restore

    return targets_and_repeats(restore(checkpoint))[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files of one plan and split")
    parser.add_argument("--label", required=True, help="the row to compare, e.g. EODRec")
    parser.add_argument("--counterpart", default=None, help="default: the row's own counterpart in the plan")
    parser.add_argument("--seeds", default=None, help="comma-separated; default: every seed both rows have")
    args = parser.parse_args(argv)
    runs, _ = load_runs(args.results)
    mine = {k.rsplit("@", 1)[1]: v for k, v in runs.items() if k.rsplit("@", 1)[0] == args.label}
    if not mine:
        raise SystemExit(f"--label {args.label!r}: no such row in {', '.join(args.results)}")
    counterpart = args.counterpart or next(iter(mine.values())).get("counterpart")
    theirs = {k.rsplit("@", 1)[1]: v for k, v in runs.items() if k.rsplit("@", 1)[0] == counterpart}
    seeds = args.seeds.split(",") if args.seeds else sorted(set(mine) & set(theirs))
    missing = [s for s in seeds if s not in mine or s not in theirs]
    if not seeds or missing:
        raise SystemExit(f"no seed of both {args.label!r} and {counterpart!r}" if not seeds
                         else f"--seeds: {', '.join(missing)} not run for both {args.label!r} and {counterpart!r}")
    checkpoints = [r["checkpoint"] for s in seeds for r in (mine[s], theirs[s]) if r.get("checkpoint")]
    found = next((c for c in checkpoints if os.path.exists(c)), None)
    if found is None:
        raise SystemExit("none of the rows' checkpoints is on this machine: the test histories cannot be rebuilt")
    repeats = repeats_of(found)
    ranks, counterpart_ranks = [mine[s]["test_ranks"] for s in seeds], [theirs[s]["test_ranks"] for s in seeds]
    rows = group_breakdown(ranks, counterpart_ranks, repeats.astype(int), ["new item", "repeat"])
    rows += group_breakdown(ranks, counterpart_ranks, np.zeros(len(repeats), dtype=int), ["all"])
    print(f"{args.label} against {counterpart}, seeds {', '.join(seeds)}")
    print("| test item | test users | share | NDCG@10 | counterpart | ratio [95 % CI] |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['group']} | {row['users']:,} | {row['share']:.1%} | {row['ndcg@10']:.4f} | "
              f"{row['counterpart_ndcg@10']:.4f} | {row['ratio']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
