"""The benchmark's confidence interval (two-level bootstrap of a ratio of means) and its verdict on a goal."""
import numpy as np
import pytest

from recbole_compress.intervals import ndcg_from_ranks, ratio_interval, ratio_of_means, verdict


def hand_interval(a, b, replicates, seed, confidence=0.95):
    """The same bootstrap written out with loops: per replicate, seeds of A, seeds of B, then users, all with
    replacement from one generator in that order; the percentile interval of the ratios."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(replicates):
        seeds_a = rng.integers(0, len(a), len(a))
        seeds_b = rng.integers(0, len(b), len(b))
        users = rng.integers(0, len(a[0]), len(a[0]))
        total_a = sum(a[s][u] for s in seeds_a for u in users) / (len(seeds_a) * len(users))
        total_b = sum(b[s][u] for s in seeds_b for u in users) / (len(seeds_b) * len(users))
        ratios.append(total_a / total_b)
    ratios.sort()
    tail = (1 - confidence) / 2
    return float(np.percentile(ratios, 100 * tail)), float(np.percentile(ratios, 100 * (1 - tail)))


def test_the_interval_matches_a_hand_computation():
    rng = np.random.default_rng(7)
    a = rng.random((3, 40)).tolist()
    b = (rng.random((2, 40)) + 0.2).tolist()
    assert ratio_interval(a, b, replicates=300, seed=11) == pytest.approx(hand_interval(a, b, 300, 11))


def test_a_constant_ratio_has_no_width_and_the_point_estimate_is_the_ratio_of_means():
    users = np.random.default_rng(0).random(50) + 0.1
    b = np.stack([users] * 3)  # every seed scores every user alike: only the users vary
    low, high = ratio_interval(2 * b, b, replicates=200)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)
    assert ratio_of_means(2 * b, b) == pytest.approx(2.0)
    # seeds are not paired between the models: seed-to-seed variation widens the interval
    noisy = b * np.array([[0.9], [1.0], [1.1]])
    low, high = ratio_interval(2 * noisy, noisy, replicates=400)
    assert low < 2.0 < high and high - low > 0.05


def test_the_interval_narrows_with_more_users_and_covers_the_truth():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        b = rng.random((3, n))
        a = 0.9 * b + rng.normal(0, 0.05, (3, n))  # a is 0.9x b, with noise
        low, high = ratio_interval(a, b, replicates=400, seed=2)
        assert low <= 0.9 <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_users_are_paired_between_the_models():
    # a and b share a large per-user effect: pairing cancels it, so the interval is tight around 1.05
    rng = np.random.default_rng(3)
    user_effect = rng.random(300) * 10
    b = np.stack([user_effect + rng.normal(0, 0.01, 300) for _ in range(3)])
    a = 1.05 * b
    low, high = ratio_interval(a, b, replicates=300)
    assert high - low < 0.01


@pytest.mark.parametrize("low, high, goal, expected", [
    (0.96, 1.10, 0.95, "met"), (0.95, 0.99, 0.95, "met"), (0.80, 0.94, 0.95, "missed"),
    (0.90, 1.02, 0.95, "within noise"), (0.90, 0.95, 0.95, "within noise"),
])
def test_verdicts(low, high, goal, expected):
    assert verdict(low, high, goal) == expected


def test_ndcg_from_ranks():
    assert ndcg_from_ranks([0, 1, 9, 10, -1]).tolist() == pytest.approx(
        [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])
