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


def test_the_within_block_probe_agrees_with_the_tree_softmax_scores_in_block_order():
    import torch

    from recbole_compress.model.layers.adaptive_softmax import AdaptiveSoftmax
    from recbole_compress.model.layers.frequency_blocks import FrequencyBlocks

    torch.manual_seed(0)
    blocks = FrequencyBlocks(torch.cat([torch.zeros(1), torch.arange(20, 0, -1)]), [5, 10])  # sizes 5, 5, 10
    n_users, d = 60, 8
    hidden = torch.randn(n_users, d) * 3
    targets = torch.randint(1, 21, (n_users,))

    class Model:
        ITEM_SEQ, ITEM_SEQ_LEN, POS_ITEM_ID = "seq", "len", "target"
        output_layer = AdaptiveSoftmax(blocks, d, [8, 4, 2]).eval()

        def forward(self, seq, seq_len):
            return hidden[seq[:, 0]]

    class Data:  # two test batches, as RecBole's full-sort loader gives (interaction, ...)
        test = [({"seq": torch.arange(a, b).unsqueeze(1), "len": torch.ones(b - a, dtype=torch.long),
                  "target": targets[a:b]},) for a, b in ((0, 25), (25, n_users))]

    model = Model()
    probe = breakdown.within_block(model, Data(), blocks, k=3)
    with torch.no_grad():
        scores = model.output_layer.log_prob_block_order(hidden)  # [users, 20] in block order
    bounds = blocks.bounds.tolist()
    for j in (1, 2):
        a, b = bounds[j], bounds[j + 1]
        rows = blocks.item_cluster[targets] == j
        in_block = scores[rows, a:b]
        target_score = scores[rows].gather(1, blocks.item_position[targets[rows]].unsqueeze(1))
        ranks = (in_block > target_score).sum(dim=1)
        assert probe[j]["users"] == int(rows.sum()) > 0
        assert probe[j]["top3_in_block"] == pytest.approx(float((ranks < 3).float().mean()))
        # p(block j) from the head is the sum of the block's item probabilities
        assert probe[j]["mean_block_probability"] == pytest.approx(float(in_block.exp().sum(dim=1).mean()), rel=1e-5)
