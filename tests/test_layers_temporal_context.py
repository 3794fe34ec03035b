"""Temporal context: time slots, context ids (joint / factorized), category selection, context-aware composition."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recbole_compress.model.layers.temporal_context import (
    ContextAwareComposition,
    TemporalContextEmbedding,
    item_categories,
    shift_right,
)

torch.set_num_threads(1)  # 2 shared cores: intra-op threads only contend (20x slower under load)


def test_shift_right_puts_the_padding_category_first():
    c = torch.tensor([[3, 4, 5], [1, 0, 0]])
    assert shift_right(c).tolist() == [[0, 3, 4], [0, 1, 0]]


def test_joint_context_ids_vocabulary_and_unk():
    c_prev = torch.tensor([[0, 1, 2]])
    c_cur = torch.tensor([[1, 2, 2]])
    slot = torch.tensor([[5, 5, 7]])
    vocab = TemporalContextEmbedding.build_vocabulary(c_prev, c_cur, slot, 3, 24)
    assert torch.equal(vocab, torch.sort(vocab).values) and len(vocab) == 3
    ctx = TemporalContextEmbedding(3, 24, 8, mode="joint", vocabulary=vocab)
    ids = ctx.context_ids(c_prev, c_cur, slot)
    assert sorted(ids.flatten().tolist()) == [1, 2, 3]  # seen tuples: rows 1..|R|
    assert ctx.context_ids(torch.tensor([2]), torch.tensor([1]), torch.tensor([5])).item() == 0  # unseen: UNK
    assert ctx.table.weight.shape == (len(vocab) + 1, 8)
    # keys separate every component
    k = TemporalContextEmbedding.keys(torch.tensor([1, 0, 0]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), 3, 24)
    assert len(set(k.tolist())) == 3
    # build_vocabulary honours the valid mask
    vocab2 = TemporalContextEmbedding.build_vocabulary(c_prev, c_cur, slot, 3, 24, valid=torch.tensor([[1, 1, 0]]).bool())
    assert len(vocab2) == 2
    out = ctx(c_prev, c_cur, slot)
    assert out.shape == (1, 3, 8)
    assert torch.equal(out[0, 0], ctx.table.weight[ids[0, 0]])


def test_factorized_context_parameter_count_and_sum():
    c, s, d = 6, 24, 5
    ctx = TemporalContextEmbedding(c, s, d, mode="factorized")
    assert sum(p.numel() for p in ctx.parameters()) == (2 * (c + 1) + s) * d
    out = ctx(torch.tensor([2]), torch.tensor([3]), torch.tensor([4]))
    expected = ctx.prev_table.weight[2] + ctx.cur_table.weight[3] + ctx.slot_table.weight[4]
    assert torch.allclose(out[0], expected)
    with pytest.raises(ValueError):
        TemporalContextEmbedding(c, s, d, mode="joint")  # joint needs its vocabulary
    with pytest.raises(ValueError):
        TemporalContextEmbedding(c, s, d, mode="other")


def _fake_dataset(values, ftype):
    from recbole.utils import FeatureSource

    return SimpleNamespace(
        field2type={"genre": ftype},
        field2source={"genre": FeatureSource.ITEM},
        item_feat={"genre": values},
        num=lambda field: 6,
    )


def test_item_categories_from_token_and_token_seq_fields():
    from recbole.utils import FeatureType

    seq = torch.tensor([[0, 0, 0], [3, 0, 0], [2, 5, 0], [1, 4, 2], [0, 0, 0]])
    last, n = item_categories(_fake_dataset(seq, FeatureType.TOKEN_SEQ), "genre", "last")
    first, _ = item_categories(_fake_dataset(seq, FeatureType.TOKEN_SEQ), "genre", "first")
    assert n == 5
    assert last.tolist() == [0, 3, 5, 2, 0]
    assert first.tolist() == [0, 3, 2, 1, 0]
    tok, _ = item_categories(_fake_dataset(torch.tensor([0, 2, 2, 1, 3]), FeatureType.TOKEN), "genre")
    assert tok.tolist() == [0, 2, 2, 1, 3]
    with pytest.raises(KeyError):
        item_categories(_fake_dataset(seq, FeatureType.TOKEN_SEQ), "categories")
    with pytest.raises(ValueError):
        item_categories(_fake_dataset(seq, FeatureType.TOKEN_SEQ), "genre", "middle")


@pytest.mark.parametrize("score", ["additive", "dot"])
def test_attention_weights_sum_to_one_and_compose_the_base_vectors(score):
    torch.manual_seed(0)
    b, t, n, d = 3, 7, 3, 8
    comp = ContextAwareComposition(d, merge="attention", score=score, inject=False)
    base, r = torch.randn(b, t, n, d), torch.randn(b, t, d)
    h, alpha = comp(base, r)
    assert alpha.shape == (b, t, n)
    assert (alpha >= 0).all()
    assert torch.allclose(alpha.sum(-1), torch.ones(b, t), atol=1e-6)
    assert torch.allclose(h, torch.einsum("btn,btnd->btd", alpha, base), atol=1e-6)
    assert alpha.std() > 0  # weights depend on the input, not uniform
    # changing the context at one position changes the weights there only
    r2 = r.clone()
    r2[1, 4] += 1.0
    _, alpha2 = comp(base, r2)
    changed = (alpha2 - alpha).abs().amax(-1) > 1e-7
    assert changed[1, 4] and changed.sum() == 1


def test_composition_parameter_counts_and_fixed_merges():
    d = 8
    additive = ContextAwareComposition(d, score="additive", inject=True)
    assert sum(p.numel() for p in additive.parameters()) == (2 * d * d + 2 * d) + (2 * d * d + d)
    dot = ContextAwareComposition(d, score="dot", inject=False)
    assert sum(p.numel() for p in dot.parameters()) == d * d + d
    deeper = ContextAwareComposition(d, inject=True, mlp_hidden_layers=1)
    assert sum(p.numel() for p in deeper.parameters()) == sum(p.numel() for p in additive.parameters()) + d * d + d
    base, r = torch.randn(2, 3, 2, d), torch.randn(2, 3, d)
    h_sum, a_sum = ContextAwareComposition(d, merge="sum", inject=False)(base, r)
    h_mean, a_mean = ContextAwareComposition(d, merge="mean", inject=False)(base, r)
    assert torch.allclose(h_sum, base.sum(-2)) and torch.allclose(a_sum, torch.ones(2, 3, 2))
    assert torch.allclose(h_mean, base.mean(-2)) and torch.allclose(a_mean, torch.full((2, 3, 2), 0.5))
    injected = ContextAwareComposition(d, merge="sum", inject=True)
    out, _ = injected(base, r)
    lin = injected.mlp[0]
    assert torch.allclose(out, torch.nn.functional.silu(lin(torch.cat([base.sum(-2), r], -1))), atol=1e-6)
    for bad in [dict(merge="max"), dict(score="cosine"), dict(mlp_act="elu"), dict(mlp_hidden_layers=-1)]:
        with pytest.raises(ValueError):
            ContextAwareComposition(d, **bad)
    assert math.isclose(float(a_mean.sum(-1).mean()), 1.0)


def test_mult_and_attention_mult_merges():
    torch.manual_seed(0)
    b, t, n, d = 3, 5, 2, 8
    base, r = torch.randn(b, t, n, d), torch.randn(b, t, d)
    h, alpha = ContextAwareComposition(d, merge="mult", inject=False)(base, r)
    assert torch.allclose(h, base[..., 0, :] * base[..., 1, :]) and torch.equal(alpha, torch.ones(b, t, n))
    comp = ContextAwareComposition(d, merge="attention_mult", inject=False)
    assert sum(p.numel() for p in comp.parameters()) == 2 * d * d + 2 * d  # no parameter beyond Eq.(6)'s
    h, alpha = comp(base, r)
    assert alpha.shape == (b, t, n + 1) and torch.allclose(alpha.sum(-1), torch.ones(b, t), atol=1e-6)
    candidates = torch.cat([(base[..., 0, :] * base[..., 1, :]).unsqueeze(-2), base], dim=-2)
    assert torch.allclose(h, torch.einsum("btk,btkd->btd", alpha, candidates), atol=1e-6)
    r2 = r.clone()
    r2[2, 1] += 1.0  # the context chooses the weights, position by position
    _, alpha2 = comp(base, r2)
    changed = (alpha2 - alpha).abs().amax(-1) > 1e-7
    assert changed[2, 1] and changed.sum() == 1


@pytest.mark.parametrize("merge", ["mult", "attention_mult"])
def test_product_merges_tell_apart_the_items_of_one_quotient_row(merge):
    """Items (r, q) of one quotient row q: with a product in the merge, the difference between the two remainder
    choices depends on q (a different vector per row); Eq.(7)'s sum under fixed weights does not."""
    torch.manual_seed(0)
    d = 8
    remainder, quotient = torch.randn(2, d), torch.randn(6, d)
    base = torch.stack([remainder[[0, 1]].repeat(6, 1), quotient.repeat_interleave(2, 0)], dim=1)  # [12, 2, d]
    context = torch.zeros(12, d)
    for name, expect_varies in [(merge, True), ("sum", False)]:
        h, _ = ContextAwareComposition(d, merge=name, inject=False)(base, context)
        within_row = h[1::2] - h[0::2]  # [6 rows, d]
        spread = (within_row - within_row.mean(0)).abs().max().item()
        assert (spread > 0.1) if expect_varies else (spread < 1e-6), name
