"""Confidence intervals for comparing two models on the same test users, and the verdict on a goal.

A benchmark compares model A with its counterpart B on the same test users, each trained with several seeds. The
figure of interest is the ratio of mean test NDCG@10, ``mean(A) / mean(B)``. Two sources of noise move it: which
users happen to be in the test set, and how training went for a seed. :func:`ratio_interval` is a two-level
(hierarchical) percentile bootstrap over both: every replicate draws the seeds of A and of B with replacement
(independently: a seed does not pair the two models' training), then the test users with replacement (the same users
for both models: the comparison is paired by user), and takes the ratio of the means over the drawn seeds and users.
With one seed per model it is the ordinary paired bootstrap over users.
"""
import numpy as np

VERDICTS = ("met", "missed", "within noise")


def ratio_of_means(a, b):
    """``mean(a) / mean(b)`` over all seeds and users (``a``, ``b``: ``[seeds, users]``)."""
    return float(np.mean(a) / np.mean(b))


def ratio_interval(a, b, confidence=0.95, replicates=2000, seed=0):
    """The bootstrap interval of ``mean(a) / mean(b)``.

    Args:
        a, b (array-like): per-user scores ``[seeds, users]`` of the two models, users in the same order (the same
            test users); the seed counts may differ.
        confidence (float): e.g. 0.95 for a 95 % interval.
        replicates (int): bootstrap replicates.
        seed (int): seed of the resampling.

    Returns:
        (low, high): the percentile interval.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two models were scored on different numbers of users ({a.shape[1]}, {b.shape[1]})")
    rng = np.random.default_rng(seed)
    n_users = a.shape[1]
    ratios = np.empty(replicates)
    for r in range(replicates):
        seeds_a = rng.integers(0, a.shape[0], a.shape[0])
        seeds_b = rng.integers(0, b.shape[0], b.shape[0])
        users = rng.integers(0, n_users, n_users)
        mean_b = b[np.ix_(seeds_b, users)].mean()
        ratios[r] = a[np.ix_(seeds_a, users)].mean() / mean_b if mean_b > 0 else np.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def verdict(low, high, goal):
    """``met`` when the interval's lower bound reaches the goal, ``missed`` when its upper bound is below it,
    ``within noise`` otherwise."""
    if low >= goal:
        return "met"
    if high < goal:
        return "missed"
    return "within noise"


def ndcg_from_ranks(ranks, k=10):
    """Per-user NDCG@k from the 0-based rank of each user's single test item (-1: not in the top k)."""
    ranks = np.asarray(ranks)
    out = np.zeros(ranks.shape, dtype=np.float64)
    hit = (ranks >= 0) & (ranks < k)
    out[hit] = 1.0 / np.log2(ranks[hit] + 2.0)
    return out
