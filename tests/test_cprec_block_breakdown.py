"""benchmarks/cprec_block_breakdown.py: CpRec against its counterpart, per frequency block of the test item."""
import importlib.util
import math
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "cprec_block_breakdown.py")
spec = importlib.util.spec_from_file_location("cprec_block_breakdown", SCRIPT)
breakdown = importlib.util.module_from_spec(spec)
spec.loader.exec_module(breakdown)


def test_a_model_that_fails_only_on_tail_items_shows_it_in_the_tail_row_alone():
    # six users: the first four have a head item (block 0), the last two a tail item (block 1)
    blocks = [0, 0, 0, 0, 1, 1]
    counterpart = [0, 1, -1, 0, 0, 1]  # 0-based ranks in the top 10; -1: not in it
    model = [0, 1, -1, 0, -1, -1]      # the same on the head, misses every tail item
    repeats = [True, False, False, False, True, True]  # test item in the user's history
    rows = breakdown.block_breakdown(model, counterpart, blocks, n_blocks=2, repeats=repeats, replicates=200)
    head, tail = rows
    assert (head["users"], tail["users"]) == (4, 2)
    assert head["share"] == pytest.approx(4 / 6) and tail["share"] == pytest.approx(2 / 6)
    assert head["repeats"] == pytest.approx(1 / 4) and tail["repeats"] == 1.0
    by_hand = (1 + 1 / math.log2(3) + 0 + 1) / 4
    assert head["ndcg@10"] == pytest.approx(by_hand) and head["counterpart_ndcg@10"] == pytest.approx(by_hand)
    assert head["ratio"] == pytest.approx(1.0) and head["ci"] == pytest.approx([1.0, 1.0])
    assert tail["ndcg@10"] == 0.0 and tail["counterpart_ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert tail["ratio"] == 0.0 and tail["ci"][1] == 0.0
