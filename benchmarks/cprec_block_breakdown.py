"""Test NDCG@10 of a CpRec model against its counterpart, split by the frequency block of each user's test item.

    PYTHONPATH=. python benchmarks/cprec_block_breakdown.py <results.json with the CpRec row> \
        [--counterpart_results <results.json with the counterpart row>] [--label CpRec-Ab] [--seed 2020]

The question it answers (issue 16): does a tail block of small width (4 at width 64 with the paper's factor 4) limit
CpRec's accuracy? If it did, CpRec's ratio to the uncompressed model would be much lower on test items of the tail
block than on the head's. Both rows must come from one plan and split (the same test users in the same order); the
blocks are those of the CpRec checkpoint (its training split's frequency ranking), rebuilt with its dataset. It also
prints, for every tail block, how often the test item is in the top 10 of that block's own softmax and the block's
mean probability from the head: a block too narrow to rank its items apart shows a low first figure.
"""
import argparse
import json

import numpy as np

from benchmarks.repeat_breakdown import targets_and_repeats
from recbole_compress.intervals import ndcg_from_ranks, ratio_interval


def block_breakdown(ranks, counterpart_ranks, target_blocks, n_blocks, repeats=None, replicates=2000):
    """Per block of the test item: its share of users, the share of them whose test item is in their history
    (``repeats``: one bool per user, optional), both models' mean NDCG@10, the ratio and its 95 % paired bootstrap
    interval over the users of that block."""
    a, b = ndcg_from_ranks(ranks), ndcg_from_ranks(counterpart_ranks)
    target_blocks = np.asarray(target_blocks)
    repeats = np.zeros(len(a), dtype=bool) if repeats is None else np.asarray(repeats, dtype=bool)
    rows = []
    for block in range(n_blocks):
        users = target_blocks == block
        mean_a, mean_b = float(a[users].mean()), float(b[users].mean())
        low, high = ratio_interval(a[users], b[users], replicates=replicates)
        rows.append({"block": block, "users": int(users.sum()), "share": float(users.mean()),
                     "repeats": float(repeats[users].mean()), "ndcg@10": mean_a, "counterpart_ndcg@10": mean_b,
                     "ratio": mean_a / mean_b, "ci": [low, high]})
    return rows


def within_block(model, data, blocks, k=10):
    """For the test users whose item is in a tail block j: the share with the item in the top ``k`` of that block's
    own softmax ``p(item | block j)``, and their mean ``p(block j)`` from the head. Tells a tail block that cannot
    rank its items apart from one whose items rank well but whose block probability keeps them out of the top k."""
    import torch

    out = model.output_layer
    k1, hits, mass, users = out.shortlist_size, {}, {}, {}
    with torch.no_grad():
        for batch in data.test:
            interaction = batch[0]
            h = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
            target = interaction[model.POS_ITEM_ID]
            block, local = blocks.item_cluster[target], blocks.item_local[target]
            head = out._head_log_prob(h)
            for j in range(1, blocks.n_clusters):
                rows = block == j
                if rows.any():
                    tail = out._tail_log_prob(j, h[rows])
                    rank = (tail > tail.gather(1, local[rows].unsqueeze(1))).sum(dim=1)
                    hits[j] = hits.get(j, 0) + int((rank < k).sum())
                    mass[j] = mass.get(j, 0.0) + float(head[rows, k1 + j - 1].exp().sum())
                    users[j] = users.get(j, 0) + int(rows.sum())
    return {j: {"users": users[j], f"top{k}_in_block": hits[j] / users[j], "mean_block_probability": mass[j] / users[j]}
            for j in users}


def _run(path, label, seed):
    with open(path) as f:
        results = json.load(f)
    return results["test_users"], results["runs"][f"{label}@{seed}"]


def _targets_and_blocks(checkpoint):
    from recbole_compress.run import restore

    restored = restore(checkpoint)
    targets, repeats = targets_and_repeats(restored)
    blocks = restored.model.blocks
    if blocks is None or not restored.model.adaptive_output:
        raise SystemExit(f"{checkpoint} is a CpRec without the block-wise tree softmax: it has no blocks to split by")
    restored.model.eval()
    probe = within_block(restored.model, restored.data, blocks)
    return blocks.item_cluster[targets].numpy(), repeats, len(blocks.bounds) - 1, blocks.bounds.tolist(), probe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--counterpart_results", default=None)
    parser.add_argument("--label", default="CpRec-Ab")
    parser.add_argument("--counterpart", default="NextItNet-uncompressed")
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    users, run = _run(args.results, args.label, args.seed)
    other_users, other = _run(args.counterpart_results or args.results, args.counterpart, args.seed)
    if users != other_users:
        raise SystemExit("the two rows were scored on different test users: not the same plan and split")
    target_blocks, repeats, n_blocks, bounds, probe = _targets_and_blocks(run["checkpoint"])
    print(f"{args.label} against {args.counterpart}, seed {args.seed}; block bounds (frequency ranks) {bounds}")
    print("| block | test users | share | in history | NDCG@10 | counterpart | ratio [95 % CI] |")
    print("|---|---|---|---|---|---|---|")
    for row in block_breakdown(run["test_ranks"], other["test_ranks"], target_blocks, n_blocks, repeats):
        print(f"| {row['block']} | {row['users']:,} | {row['share']:.1%} | {row['repeats']:.1%} | "
              f"{row['ndcg@10']:.4f} | {row['counterpart_ndcg@10']:.4f} | "
              f"{row['ratio']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] |")
    for j, row in probe.items():
        print(f"tail block {j}: {row['users']:,} test users; item in the top 10 of p(item | block): "
              f"{row['top10_in_block']:.1%}; mean p(block) from the head: {row['mean_block_probability']:.3f}")


if __name__ == "__main__":
    main()
