"""Block-wise adaptive (tree) softmax: a normalised distribution, identical to torch's AdaptiveLogSoftmaxWithLoss."""
import pytest
import torch
from torch import nn

from recbole_compress.model.layers.adaptive_softmax import AdaptiveSoftmax, adaptive_softmax_parameters
from recbole_compress.model.layers.frequency_blocks import FrequencyBlocks, resolve_cutoffs

K, D = 1000, 64


def _blocks(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 100, (K + 1,), generator=g)
    return FrequencyBlocks(counts, resolve_cutoffs(K, n, 0.2))


def _torch_oracle(sm, blocks):
    asm = nn.AdaptiveLogSoftmaxWithLoss(D, K, blocks.cutoffs, div_value=4.0, head_bias=False)
    with torch.no_grad():
        asm.head.weight.copy_(sm.head.weight)
        for j in range(blocks.n_clusters - 1):
            asm.tail[j][0].weight.copy_(sm.tail[j][0].weight)
            asm.tail[j][1].weight.copy_(sm.tail[j][1].weight)
    return asm


def test_parameter_count_is_the_closed_form():
    sm = AdaptiveSoftmax(_blocks(), D, [64, 16, 4])
    assert sum(p.numel() for p in sm.parameters()) == 19_328 == adaptive_softmax_parameters([200, 160, 640], D, [64, 16, 4])
    b1 = AdaptiveSoftmax(_blocks(n=1), D, [16])  # B1: low-rank full softmax
    assert sum(p.numel() for p in b1.parameters()) == 17_024


def test_log_probs_sum_to_one_over_the_catalogue_and_equal_torchs():
    torch.manual_seed(0)
    blocks = _blocks()
    sm = AdaptiveSoftmax(blocks, D, [64, 16, 4])
    asm = _torch_oracle(sm, blocks)
    h = torch.randn(6, D) * 3
    ranked = sm.log_prob_block_order(h)
    assert torch.allclose(torch.logsumexp(ranked, dim=1), torch.zeros(6), atol=1e-5)
    assert torch.allclose(ranked, asm.log_prob(h), atol=1e-5)
    full = sm.full_log_prob(h)
    assert full.shape == (6, K + 1) and torch.isinf(full[:, 0]).all()
    assert torch.allclose(torch.logsumexp(full[:, 1:], dim=1), torch.zeros(6), atol=1e-5)
    # catalogue order: item x sits at column x and has the log-prob of its rank
    for item in (1, 17, 500, 1000):
        assert torch.allclose(full[:, item], ranked[:, blocks.item_position[item]])


def test_target_log_prob_and_loss_equal_torchs_on_catalogue_ids():
    torch.manual_seed(1)
    blocks = _blocks()
    sm = AdaptiveSoftmax(blocks, D, [64, 16, 4])
    asm = _torch_oracle(sm, blocks)
    h = torch.randn(50, D)
    items = torch.randint(1, K + 1, (50,))
    out = asm(h, blocks.item_position[items])
    lp = sm.target_log_prob(h, items)
    assert torch.allclose(lp, out.output, atol=1e-5)
    assert torch.allclose(sm(h, items), out.loss, atol=1e-5)
    assert torch.allclose(lp, sm.full_log_prob(h).gather(1, items[:, None]).squeeze(1), atol=1e-5)
    # the targets span every block
    assert set(blocks.item_cluster[items].tolist()) == {0, 1, 2}


def test_loss_gradients_equal_torchs():
    torch.manual_seed(2)
    blocks = _blocks()
    sm = AdaptiveSoftmax(blocks, D, [64, 16, 4])
    asm = _torch_oracle(sm, blocks)
    h = torch.randn(40, D)
    items = torch.randint(1, K + 1, (40,))
    sm(h, items).backward()
    asm(h, blocks.item_position[items]).loss.backward()
    assert torch.allclose(sm.head.weight.grad, asm.head.weight.grad, atol=1e-6)
    assert torch.allclose(sm.tail[1][1].weight.grad, asm.tail[1][1].weight.grad, atol=1e-6)


def test_one_full_width_block_is_a_plain_unbiased_softmax():
    blocks = _blocks(n=1)
    sm = AdaptiveSoftmax(blocks, D, [D])
    h = torch.randn(4, D)
    assert torch.allclose(sm.log_prob_block_order(h), torch.log_softmax(h @ sm.head.weight.t(), dim=1), atol=1e-6)


def test_explicit_widths_and_head_projection_stay_normalised():
    blocks = _blocks(n=4)
    sm = AdaptiveSoftmax(blocks, D, [32, 8, 2, 1])
    assert sm.head_projection is not None
    h = torch.randn(3, D)
    assert torch.allclose(torch.logsumexp(sm.log_prob_block_order(h), 1), torch.zeros(3), atol=1e-5)
    items = torch.arange(1, K + 1, 97)
    assert torch.allclose(sm.target_log_prob(h[:1].expand(len(items), D), items),
                          sm.full_log_prob(h[:1])[0, items], atol=1e-5)


def test_padding_target_is_refused():
    sm = AdaptiveSoftmax(_blocks(), D, [64, 16, 4])
    with pytest.raises(ValueError, match="padding"):
        sm.target_log_prob(torch.randn(2, D), torch.tensor([3, 0]))


@pytest.mark.parametrize("chunk_elements", [1 << 20, 3000])
def test_evaluation_path_equals_the_differentiable_one(chunk_elements):
    torch.manual_seed(3)
    blocks = _blocks()
    sm = AdaptiveSoftmax(blocks, D, [64, 16, 4]).eval()
    h = torch.randn(7, D)
    reference = sm.full_log_prob(h)  # parameters require grad: the differentiable path
    assert reference.requires_grad
    with torch.no_grad():
        fast = sm.full_log_prob(h, chunk_elements=chunk_elements)
    assert not fast.requires_grad and fast.shape == reference.shape
    assert torch.isinf(fast[:, 0]).all()
    assert torch.allclose(fast[:, 1:], reference[:, 1:], atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 50, 300])
def test_early_stop_topk_is_exact(k):
    torch.manual_seed(4)
    blocks = _blocks()  # head of 200 items: k = 300 needs tail blocks for every row
    sm = AdaptiveSoftmax(blocks, D, [64, 16, 4]).eval()
    h = torch.randn(9, D) * 2
    values, items = sm.topk(h, k)
    with torch.no_grad():
        full = sm.full_log_prob(h)
    expected = full.topk(k, dim=1)
    assert torch.allclose(values, expected.values, atol=1e-5)
    assert torch.allclose(full.gather(1, items), expected.values, atol=1e-5)


def test_early_stop_topk_finds_a_concentrated_item_behind_a_flat_block():
    """Block 2 holds much mass spread thin; block 3 less mass on one item: that item is the best of all. The
    official code's rule (skip a block whose token is not among the head's top-k entries) would miss it."""
    blocks = _blocks()
    sm = AdaptiveSoftmax(blocks, D, [64, 16, 4]).eval()
    h = torch.zeros(1, D)
    h[0, 0] = 1.0
    with torch.no_grad():
        sm.head.weight.zero_()
        sm.head.weight[200, 0] = 6.0   # token of block 2: high probability
        sm.head.weight[201, 0] = 5.0   # token of block 3: lower, still far above any head item
        for m in sm.tail[0]:
            m.weight.zero_()           # block 2: uniform over its 160 items
        sm.tail[1][0].weight.zero_()
        sm.tail[1][0].weight[0, 0] = 1.0
        sm.tail[1][1].weight.zero_()
        sm.tail[1][1].weight[7, 0] = 20.0  # block 3: almost all mass on its 8th item
    values, items = sm.topk(h, 1)
    target = int(blocks.item_order[360 + 7])
    assert items.tolist() == [[target]]
    head_entries = torch.log_softmax(sm.head(h), 1)[0]
    assert head_entries.argmax() == 200  # block 3's token is not the head's best entry
