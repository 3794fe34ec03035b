"""Block-wise adaptive input embedding: lookups, padding, parameter count, gradients."""
import torch
from torch import nn

from recbole_compress.model.layers.adaptive_embedding import AdaptiveEmbedding, adaptive_embedding_parameters
from recbole_compress.model.layers.frequency_blocks import FrequencyBlocks, resolve_cutoffs


def _blocks(K=1000, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 100, (K + 1,), generator=g)
    return FrequencyBlocks(counts, resolve_cutoffs(K, n, 0.2))


def test_parameter_count_is_the_closed_form():
    emb = AdaptiveEmbedding(_blocks(), 64, [64, 16, 4])  # sizes [200, 160, 640]
    assert sum(p.numel() for p in emb.parameters()) == 19_200 == adaptive_embedding_parameters([200, 160, 640], 64, [64, 16, 4])
    b1 = AdaptiveEmbedding(_blocks(n=1), 64, [16])  # B1: one block, low rank
    assert sum(p.numel() for p in b1.parameters()) == 17_024


def test_lookup_equals_the_materialised_rows_and_padding_is_zero():
    blocks = _blocks()
    emb = AdaptiveEmbedding(blocks, 64, [64, 16, 4])
    items = torch.tensor([[0, 1, 2, 3], [500, 999, 1000, 0]])
    out = emb(items)
    assert out.shape == (2, 4, 64)
    full = emb.materialise()
    for b in range(2):
        for t in range(4):
            item = int(items[b, t])
            if item == 0:
                assert torch.equal(out[b, t], torch.zeros(64))
            else:
                assert torch.allclose(out[b, t], full[blocks.item_position[item]], atol=1e-6)
    # rows of a tail block are a narrow vector times the block's projection
    tail_item = int(blocks.item_order[blocks.bounds[2]])  # first item of block 3
    local = int(blocks.item_local[tail_item])
    assert torch.allclose(emb(torch.tensor([tail_item]))[0], emb.tables[2][local] @ emb.projection(2), atol=1e-6)
    assert emb.projection(0) is None


def test_one_full_width_block_is_a_plain_lookup():
    blocks = _blocks(n=1)
    emb = AdaptiveEmbedding(blocks, 32, [32])
    plain = nn.Embedding(1001, 32, padding_idx=0)
    with torch.no_grad():
        plain.weight[1:] = emb.tables[0][blocks.item_position[1:]]
    items = torch.randint(0, 1001, (3, 7))
    assert torch.allclose(emb(items), plain(items))


def test_gradients_reach_only_the_rows_used():
    blocks = _blocks()
    emb = AdaptiveEmbedding(blocks, 16, [16, 4, 1])
    head_item = int(blocks.item_order[0])
    emb(torch.tensor([head_item, 0])).sum().backward()
    assert emb.tables[0].grad[0].abs().sum() > 0
    assert emb.tables[0].grad[1:].abs().sum() == 0
    assert emb.tables[1].grad is None or emb.tables[1].grad.abs().sum() == 0


def test_large_batches_take_the_materialised_path_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    blocks = _blocks()
    emb = AdaptiveEmbedding(blocks, 16, [16, 4, 1])
    items = torch.randint(0, 1001, (2, 600))  # 1200 positions >= K = 1000: one K x d matrix, then a gather
    big = emb(items)
    rows = torch.cat([emb(items[:1]), emb(items[1:])])  # 600 positions each: the per-block gathers
    assert torch.allclose(big, rows, atol=1e-6)
    assert torch.equal(big[items == 0], torch.zeros(int((items == 0).sum()), 16))
    grads = []
    for out in (lambda: emb(items), lambda: torch.cat([emb(items[:1]), emb(items[1:])])):
        emb.zero_grad()
        (out() * torch.arange(16.0)).sum().backward()
        grads.append([p.grad.clone() for p in emb.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)
