"""benchmarks/eodrec_repeat_probe.py: what outranks a repeated item, by group."""
import importlib.util
import os

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "eodrec_repeat_probe.py")
spec = importlib.util.spec_from_file_location("eodrec_repeat_probe", SCRIPT)
repeat_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repeat_probe)


def test_items_above_a_repeated_target_are_sorted_into_history_neighbours_and_chimeras():
    # 8 items (0: padding), two codebooks; user history [1, 2], target 1 (a repeat)
    codes = torch.tensor([[0, 0], [1, 1], [2, 2], [1, 3], [3, 3], [1, 2], [2, 1], [3, 0]])
    # above the target (score 5): item 2 (history), items 5 = (1, 2) and 6 = (2, 1), each sharing one code with the
    # target and built only from codewords of the history, and item 3 = (1, 3), whose second code is not in the
    # history; items 4 and 7 score below the target
    scores = torch.tensor([[0.0, 5.0, 9.0, 6.0, 1.0, 8.0, 7.0, 0.5]])
    out = repeat_probe.outrankers(scores, torch.tensor([1]), torch.tensor([[1, 2]]), codes, k=5)
    assert out["users"] == 1 and out["top1"] == 0 and out["top5"] == 1
    assert (out["history"], out["neighbour_3"], out["neighbour_2"], out["other"]) == (1, 0, 0, 3)
    # items 5 and 6 recombine the history's codewords (coverage 1); item 3 has code 3 in codebook 2 (coverage 0.5)
    assert sorted(out["other_coverage"]) == pytest.approx([0.5, 1.0, 1.0])


def test_a_target_that_wins_has_nothing_above_it_and_padding_never_counts():
    codes = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])
    scores = torch.tensor([[99.0, 9.0, 1.0, 2.0]])  # the padding column's score is ignored
    out = repeat_probe.outrankers(scores, torch.tensor([1]), torch.tensor([[2, 1, 0]]), codes, k=3)
    assert out["top1"] == 1 and out["history"] + out["neighbour_3"] + out["neighbour_2"] + out["other"] == 0
    assert out["other_coverage"] == []


def test_the_probe_scores_every_user_and_flags_the_repeats():
    import math

    codes = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3], [1, 2]])
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0, 0.5],    # user 0: target 1 (repeat), ranked first
                           [0.0, 3.0, 2.0, 1.0, 0.5],    # user 1: target 2 (new), ranked second
                           [9.0, 1.0, 2.0, 3.0, 4.0]])   # user 2: target 1 (repeat), ranked fourth, after 4, 3, 2

    class Model:
        def eval(self):
            return self

        def full_sort_predict(self, interaction):
            return scores[interaction["rows"]]

    batch = {"rows": torch.arange(3), "item": torch.tensor([1, 2, 1]),
             "history": torch.tensor([[1, 3], [1, 3], [2, 1]])}
    summary, ndcg, repeat = repeat_probe.probe(Model(), [(batch,)], "item", "history", codes, batches=0)
    assert repeat.tolist() == [True, False, True]
    assert ndcg.tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(5)])
    assert summary["users"] == 2 and summary["top1"] == 0.5 and summary["top10"] == 1.0
    # above user 2's target: item 2 (history), item 3 (no code shared, code 3 not in the history) and item 4 =
    # (1, 2), its codes both the history's (shares one code with the target: "other")
    assert summary["history"] == 0.5 and summary["other"] == 1.0 and summary["other_coverage"] == pytest.approx(0.5)


def test_the_oracle_demotes_chimeras_and_splits_them_by_pair_coverage():
    # M = 4, K = 4; history items 1 = (0, 0, 1, 1) and 2 = (2, 2, 3, 3); target 1 (a repeat)
    codes = torch.tensor([[0, 0, 0, 0],
                          [0, 0, 1, 1], [2, 2, 3, 3],
                          [0, 0, 3, 3],    # 3: pairs (0,0) of item 1 and (3,3) of item 2: a pair-covered chimera
                          [0, 2, 1, 1],    # 4: all four codes in the history, pair (0,2) in none: another chimera
                          [0, 0, 1, 2],    # 5: three of four codes covered, pair (1,2) in none: another chimera
                          [1, 1, 1, 1],    # 6: two of four covered: not a chimera
                          [0, 0, 1, 1]])   # 7: same code as the target, not in the history: a chimera, pair-covered
    scores = torch.tensor([[50.0, 1.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0]])
    ranks = repeat_probe.demotion_oracle(scores, torch.tensor([1]), torch.tensor([[0, 1, 2]]), codes, 4)
    # above the target: 2 (history), 3, 4, 5, 6, 7 -> rank 6; chimeras 3, 4, 5, 7; pair-covered 3, 7
    assert {rule: int(r) for rule, r in ranks.items()} == {
        "as scored": 6, "chimeras demoted": 2, "pair-covered chimeras demoted": 4, "other chimeras demoted": 4}
