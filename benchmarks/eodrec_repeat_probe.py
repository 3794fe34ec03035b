"""What outranks a repeated item: for validation users whose item repeats their history, which items of the top 10
score above it in an EODRec student and in its teacher.

    PYTHONPATH=. python benchmarks/eodrec_repeat_probe.py --checkpoint <EODRec student> --teacher <its teacher> \
        [--batches N]

Items above the target are sorted into: other history items; code neighbours of the target (not in the history,
sharing 3, or 2, of the student's codes with it); the rest. For the rest it also reports the share of their codes
that occur, in the same codebook, among the history items' codes (a random item's share for reference). A high
share means "chimeras": with additive codes and a dot-product score, an item's score is a sum over codebooks, so an
item recombining the history's codewords scores like the history items themselves. Validation split only (the
test split stays for the benchmark); ``--batches`` limits the work to the first validation batches. It also splits
the validation users' NDCG@10 of both models by whether their item is a repeat (ratio with a paired bootstrap
interval).

``--oracle`` adds what removing chimeras could win at most: the student's NDCG@10 on the repeat users if the items
not in the history with at least ``M - 1`` of their ``M`` codes among the history's codewords were ranked last; split
into those whose code pairs ``(0, 1), (2, 3), ...`` each occur together in some history item (a score built from
per-pair tables, as ``code_composition: pair_product`` makes it, cannot tell them from history recombinations) and
those with a pair the history never has (which such a score can separate).
"""
import argparse

import torch

from recbole_compress.intervals import ndcg_from_ranks, ratio_interval
from recbole_compress.model.layers.codebook_embedding import pair_columns, pair_table_width
from recbole_compress.run import restore

GROUPS = ("history", "neighbour_3", "neighbour_2", "other")


def _coverage(items, history, codes):
    """Share of each item's codes that occur at the same codebook among the (non-padding) history items' codes."""
    item_codes, history_codes = codes[items], codes[history]           # users x n x M, users x L x M
    present = (item_codes.unsqueeze(2) == history_codes.unsqueeze(1)) & (history > 0)[:, None, :, None]
    return present.any(2).float().mean(2)                              # users x n


def outrankers(scores, targets, history, codes, generator=None, k=10):
    """For users whose target repeats their history (rows of ``scores``: all items, column 0 the padding): counts
    of the items in the top ``k`` scoring above the target, by group, and the code coverage of the "other" ones."""
    scores = scores.clone()
    scores[:, 0] = -float("inf")
    target_score = scores.gather(1, targets.unsqueeze(1))
    rank = (scores > target_score).sum(1)
    top = scores.topk(min(k, scores.shape[1] - 1), dim=1).indices  # a catalogue smaller than k: all items
    above = scores.gather(1, top) > target_score
    in_history = (top.unsqueeze(2) == history.unsqueeze(1)).any(2)
    shared = (codes[top] == codes[targets].unsqueeze(1)).sum(2)
    masks = {"history": above & in_history, "neighbour_3": above & ~in_history & (shared >= 3),
             "neighbour_2": above & ~in_history & (shared == 2), "other": above & ~in_history & (shared < 2)}
    random_items = torch.randint(1, codes.shape[0], top.shape, generator=generator)
    return {"users": len(targets), "top1": int((rank == 0).sum()), f"top{k}": int((rank < k).sum()),
            **{g: int(m.sum()) for g, m in masks.items()},
            "other_coverage": _coverage(top, history, codes)[masks["other"]].tolist(),
            "random_coverage": _coverage(random_items, history, codes).flatten().tolist()}


ORACLE_RULES = ("as scored", "chimeras demoted", "pair-covered chimeras demoted", "other chimeras demoted")


def _occurs(history, columns, width):
    """``users x width``: which values of ``columns`` (one per item) the user's history items (not padding) have."""
    present = torch.zeros(history.shape[0], width, dtype=torch.bool)
    return present.scatter_(1, columns[history], history > 0)


def demotion_oracle(scores, targets, history, codes, codebook_size):
    """Ranks of the targets (rows of ``scores``; column 0 the padding) under each of :data:`ORACLE_RULES`: chimeras
    are items not in the history with at least ``M - 1`` of their ``M`` codes among the history's codewords of the
    same codebook; "pair-covered" ones have every code pair (of :func:`pair_columns`) in some history item."""
    m = codes.shape[1]
    cover = sum(_occurs(history, codes[:, j], codebook_size)[:, codes[:, j]].long() for j in range(m))
    pairs = pair_columns(codes, codebook_size)
    width = pair_table_width(m, codebook_size)
    pair_covered = torch.stack([_occurs(history, col, width)[:, col] for col in pairs]).all(0)
    in_history = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, history, True)
    chimera = (cover >= m - 1) & ~in_history
    chimera[:, 0] = False
    scores = scores.clone()
    scores[:, 0] = -float("inf")
    target = scores.gather(1, targets.unsqueeze(1))
    masks = {"as scored": torch.zeros_like(chimera), "chimeras demoted": chimera,
             "pair-covered chimeras demoted": chimera & pair_covered, "other chimeras demoted": chimera & ~pair_covered}
    return {rule: ((scores > target) & ~mask).sum(1) for rule, mask in masks.items()}


def probe(model, data, item_field, history_field, codes, batches, codebook_size=None):
    """The outrankers of repeated items (means per repeat user) over the first ``batches`` validation batches (0: all),
    and every user's NDCG@10 there with a flag for a repeated item. With ``codebook_size``, ``summary["oracle"]``
    holds the repeat users' NDCG@10 under each of :data:`ORACLE_RULES` (:func:`demotion_oracle`)."""
    totals, ranks, repeats, generator = {}, [], [], torch.Generator().manual_seed(0)
    oracle = {rule: [] for rule in ORACLE_RULES}
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(data):
            if batches and i >= batches:
                break
            interaction = batch[0]
            repeat = (interaction[history_field] == interaction[item_field].unsqueeze(1)).any(1)
            scores = model.full_sort_predict(interaction).view(len(repeat), -1)
            scores[:, 0] = -float("inf")
            rank = (scores > scores.gather(1, interaction[item_field].unsqueeze(1))).sum(1)
            ranks.append(rank)
            repeats.append(repeat)
            if not repeat.any():
                continue
            rows = repeat.nonzero().squeeze(1)
            counts = outrankers(scores[rows], interaction[item_field][rows], interaction[history_field][rows], codes,
                                generator)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0 if not isinstance(value, list) else []) + value
            if codebook_size:
                oracle_ranks = demotion_oracle(scores[rows], interaction[item_field][rows],
                                               interaction[history_field][rows], codes, codebook_size)
                for rule, value in oracle_ranks.items():
                    oracle[rule].append(value)
    users = totals.get("users", 0)
    if not users:
        raise SystemExit("no validation user in these batches repeats an item of the history")
    summary = {"users": users, **{k: totals[k] / users for k in ("top1", "top10") + GROUPS}}
    for key in ("other_coverage", "random_coverage"):
        summary[key] = sum(totals[key]) / len(totals[key]) if totals[key] else float("nan")
    if codebook_size:
        summary["oracle"] = {rule: float(ndcg_from_ranks(torch.cat(v).numpy()).mean()) for rule, v in oracle.items()}
    return summary, ndcg_from_ranks(torch.cat(ranks).numpy()), torch.cat(repeats).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an EODRec student (its codes define the neighbours)")
    parser.add_argument("--teacher", required=True, help="the teacher it was distilled from")
    parser.add_argument("--batches", type=int, default=0, help="validation batches to read (0: all)")
    parser.add_argument("--oracle", action="store_true", help="also the student's chimera-demotion oracle")
    args = parser.parse_args(argv)
    student = restore(args.checkpoint)
    codes = student.model.item_codebook.codes.long()
    teacher = restore(args.teacher, student.data, student.config["device"])
    item_field = student.config["ITEM_ID_FIELD"]
    history_field = item_field + student.config["LIST_SUFFIX"]
    results = {name: probe(run.model, student.data.valid, item_field, history_field, codes, args.batches,
                           student.model.codebook_size if args.oracle and name == "student" else None)
               for name, run in (("student", student), ("teacher", teacher))}
    print("| model | repeat users | target first | target in top 10 | above it, per user: history | code neighbours "
          "(3 / 2 shared) | other | other's codes in the history (random item) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (s, _, _) in results.items():
        print(f"| {name} | {s['users']:,} | {s['top1']:.3f} | {s['top10']:.3f} | {s['history']:.2f} | "
              f"{s['neighbour_3']:.2f} / {s['neighbour_2']:.2f} | {s['other']:.2f} | "
              f"{s['other_coverage']:.3f} ({s['random_coverage']:.3f}) |")
    (_, a, repeat), (_, b, _) = results["student"], results["teacher"]
    print("\n| validation item | users | student NDCG@10 | teacher NDCG@10 | ratio [95 % CI] |\n|---|---|---|---|---|")
    for name, users in (("repeats a history item", repeat), ("new item", ~repeat), ("all", repeat | ~repeat)):
        low, high = ratio_interval(a[users], b[users])
        print(f"| {name} | {int(users.sum()):,} ({users.mean():.1%}) | {a[users].mean():.4f} | {b[users].mean():.4f} | "
              f"{a[users].mean() / b[users].mean():.3f} [{low:.3f}, {high:.3f}] |")
    if args.oracle:
        print("\n| student, repeat users | NDCG@10 |\n|---|---|")
        for rule, value in results["student"][0]["oracle"].items():
            print(f"| {rule} | {value:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
