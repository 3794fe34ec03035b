"""Product-key memory: exact top-k against brute force, slots, gradient paths, weights, query networks, usage."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from recbole_compress.model.layers.product_key_memory import (
    HierarchicalQueryNetwork,
    MaskedMeanQuery,
    ProductKeyMemory,
    masked_mean,
    product_key_topk,
)


def brute_force_topk(query, sub_keys, topk):
    """Score every one of the n_keys**2 product keys and take the top-k (the O(K d) search PKM avoids)."""
    n_heads, _, n_keys, half = sub_keys.shape
    s1 = torch.einsum("nhd,hkd->nhk", query[..., :half], sub_keys[:, 0])
    s2 = torch.einsum("nhd,hkd->nhk", query[..., half:], sub_keys[:, 1])
    full = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)  # [N, H, n_keys**2], index i * n_keys + j
    return full.topk(topk, dim=-1), s1, s2


CASES = [
    (n_keys, k, heads)
    for n_keys, k, heads in itertools.product((4, 16, 32), (1, 4, 8, 16), (1, 2))
    if k <= n_keys
]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("n_keys,k,heads", CASES)
def test_topk_equals_brute_force_over_all_keys(n_keys, k, heads, dtype, atol):
    gen = torch.Generator().manual_seed(n_keys * 100 + k * 10 + heads)
    d_k = 12
    query = torch.randn(64, heads, d_k, generator=gen, dtype=dtype)
    sub_keys = torch.randn(heads, 2, n_keys, d_k // 2, generator=gen, dtype=dtype)
    scores, indices = product_key_topk(query, sub_keys, k)
    (bf_scores, bf_indices), s1, s2 = brute_force_topk(query, sub_keys, k)
    assert scores.shape == indices.shape == (64, heads, k)
    torch.testing.assert_close(scores, bf_scores, atol=atol, rtol=0)
    assert torch.all(scores[..., :-1] >= scores[..., 1:])  # sorted in decreasing order
    for n, h in itertools.product(range(64), range(heads)):
        assert set(indices[n, h].tolist()) == set(bf_indices[n, h].tolist())
    rows, cols = indices // n_keys, indices % n_keys  # decoding reproduces the scores
    decoded = s1.gather(-1, rows) + s2.gather(-1, cols)
    torch.testing.assert_close(decoded, scores, atol=atol, rtol=0)


def test_module_retrieval_equals_brute_force_on_its_own_query():
    torch.manual_seed(0)
    pkm = ProductKeyMemory(input_size=10, value_size=6, n_keys=8, topk=5, heads=2, key_size=8).double().eval()
    x = torch.randn(32, 10, dtype=torch.float64)
    out = pkm(x)
    (bf_scores, bf_indices), _, _ = brute_force_topk(pkm.query(x), pkm.sub_keys, 5)
    torch.testing.assert_close(out.scores, bf_scores, atol=1e-10, rtol=0)
    assert torch.equal(out.indices.sort(-1).values, bf_indices.sort(-1).values)


def test_topk_larger_than_sub_key_count_is_refused():
    with pytest.raises(ValueError, match="topk"):
        ProductKeyMemory(input_size=4, value_size=4, n_keys=4, topk=5)
    with pytest.raises(ValueError, match="topk"):
        product_key_topk(torch.randn(2, 1, 4), torch.randn(1, 2, 4, 2), 5)
    with pytest.raises(ValueError, match="key_size"):
        ProductKeyMemory(input_size=4, value_size=4, n_keys=4, topk=2, key_size=5)
    with pytest.raises(ValueError, match="weighting"):
        ProductKeyMemory(input_size=4, value_size=4, n_keys=4, topk=2, weighting="mean")


@pytest.mark.parametrize("heads", [1, 2])
def test_slots_are_separate_weighted_values(heads):
    torch.manual_seed(1)
    k, d = 3, 5
    pkm = ProductKeyMemory(input_size=7, value_size=d, n_keys=4, topk=k, heads=heads, key_size=6).double().eval()
    out = pkm(torch.randn(9, 7, dtype=torch.float64))
    assert out.slots.shape == (9, heads * k, d)
    for h, j in itertools.product(range(heads), range(k)):
        expected = out.weights[:, h, j, None] * pkm.values[out.indices[:, h, j]]
        torch.testing.assert_close(out.slots[:, h * k + j], expected, atol=1e-12, rtol=0)
    pkm.weighting = "none"  # Alg. 1: the values themselves
    out = pkm(torch.randn(9, 7, dtype=torch.float64))
    assert torch.equal(out.slots, pkm.values[out.indices].reshape(9, heads * k, d))


def test_weights_softmax_sums_to_k_and_ste_forward_is_one():
    torch.manual_seed(2)
    pkm = ProductKeyMemory(input_size=6, value_size=4, n_keys=6, topk=4, heads=2, key_size=4).eval()
    x = torch.randn(11, 6)
    soft = pkm(x)
    torch.testing.assert_close(soft.weights.sum(-1), torch.full((11, 2), 4.0))
    torch.testing.assert_close(soft.weights, 4 * torch.softmax(soft.scores, -1))
    pkm.weighting = "ste"
    ste = pkm(x)
    assert torch.equal(ste.indices, soft.indices)
    torch.testing.assert_close(ste.weights, torch.ones_like(ste.weights), atol=1e-7, rtol=0)
    pkm.weighting = "none"
    torch.testing.assert_close(pkm(x).slots, ste.slots, atol=1e-6, rtol=0)


@pytest.mark.parametrize("weighting", ["softmax", "ste", "none"])
def test_gradients_are_sparse_on_values_and_reach_keys_and_query_unless_none(weighting):
    torch.manual_seed(3)
    query_net = HierarchicalQueryNetwork(8, max_seq_length=12, stride=4, n_heads=2)
    pkm = ProductKeyMemory(input_size=8, value_size=8, n_keys=8, topk=3, weighting=weighting,
                           query_network=query_net)
    x = torch.randn(5, 12, 8)
    mask = torch.arange(12)[None, :] < torch.tensor([12, 3, 7, 1, 9])[:, None]
    out = pkm(x, mask)
    (out.slots * torch.randn_like(out.slots)).sum().backward()
    touched = torch.zeros(64, dtype=torch.bool)
    touched[out.indices.flatten()] = True
    row_grad = pkm.values.grad.abs().sum(-1)
    assert torch.all(row_grad[~touched] == 0) and torch.all(row_grad[touched] > 0)
    key_grad = pkm.sub_keys.grad
    query_grads = [p.grad for p in list(query_net.parameters()) + [pkm.query_proj.weight]]
    if weighting == "none":
        assert key_grad is None or torch.all(key_grad == 0)
        assert all(g is None or torch.all(g == 0) for g in query_grads)
    else:
        assert key_grad is not None and key_grad.abs().sum() > 0
        assert pkm.query_proj.weight.grad.abs().sum() > 0
        assert query_net.projections[0].weight.grad.abs().sum() > 0


def test_query_batchnorm_with_one_training_query_uses_running_statistics():
    torch.manual_seed(4)
    pkm = ProductKeyMemory(input_size=6, value_size=4, n_keys=4, topk=2)
    pkm.train()
    pkm(torch.randn(16, 6))  # moves the running statistics
    x = torch.randn(1, 6)
    train_out = pkm(x)  # BatchNorm1d itself would raise on one sample
    pkm.eval()
    torch.testing.assert_close(train_out.slots, pkm(x).slots)
    no_bn = ProductKeyMemory(input_size=6, value_size=4, n_keys=4, topk=2, query_batchnorm=False)
    assert no_bn.query_bn is None and sum(p.numel() for p in pkm.parameters()) - sum(
        p.numel() for p in no_bn.parameters()) == 2 * 4


def test_initialisation_follows_xlm():
    torch.manual_seed(5)
    pkm = ProductKeyMemory(input_size=64, value_size=64, n_keys=16, topk=8, key_size=64)
    bound = 1 / 32 ** 0.5
    assert pkm.sub_keys.abs().max() <= bound and pkm.sub_keys.abs().max() > 0.9 * bound
    assert abs(pkm.values.std().item() - 64 ** -0.5) < 0.01


@pytest.mark.parametrize("length,stride,levels", [(256, 8, 3), (50, 8, 2), (1024, 8, 4), (1, 8, 0), (9, 3, 2)])
def test_hierarchical_query_network_level_count(length, stride, levels):
    net = HierarchicalQueryNetwork(4, max_seq_length=length, stride=stride, n_heads=1)
    assert net.n_levels == levels == len(net.projections)
    out = net(torch.randn(2, length, 4), torch.ones(2, length, dtype=torch.bool))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_hierarchical_query_network_ignores_padded_positions():
    torch.manual_seed(6)
    net = HierarchicalQueryNetwork(8, max_seq_length=50, stride=8, n_heads=2).double().eval()
    lengths = torch.tensor([50, 1, 8, 9, 23])
    mask = torch.arange(50)[None, :] < lengths[:, None]
    x = torch.randn(5, 50, 8, dtype=torch.float64)
    junk = torch.where(mask.unsqueeze(-1), x, torch.randn_like(x) * 100)
    torch.testing.assert_close(net(x, mask), net(junk, mask), atol=1e-10, rtol=0)
    # and the result does depend on the valid positions
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert (net(x2, mask) - net(x, mask)).abs().amax(-1).min() > 1e-6


def test_padded_chunks_are_zero_and_masked_at_the_next_level():
    torch.manual_seed(7)
    net = HierarchicalQueryNetwork(4, max_seq_length=16, stride=4, n_heads=1).double().eval()
    masks, level2_inputs = [], []
    net.attentions[0].register_forward_hook(lambda mod, inp, out: masks.append(inp[1]))
    net.projections[1].register_forward_hook(lambda mod, inp, out: level2_inputs.append(inp[0]))
    mask = torch.arange(16)[None, :] < torch.tensor([5])[:, None]  # chunks 0, 1 valid; 2, 3 padding only
    net(torch.randn(1, 16, 4, dtype=torch.float64), mask)
    additive = masks[0]
    assert torch.all(additive[0, 0, 0, :2] == 0) and torch.all(additive[0, 0, 0, 2:] < -1e30)
    level2 = level2_inputs[0].reshape(1, 4, 4)  # the 4 level-1 chunk outputs, concatenated
    assert torch.all(level2[0, 2:] == 0) and torch.all(level2[0, :2].abs().sum(-1) > 0)


def test_query_levels_then_masked_mean_and_mean_query():
    torch.manual_seed(8)
    net = HierarchicalQueryNetwork(4, max_seq_length=64, stride=4, n_levels=1, n_heads=1)
    assert net.n_levels == 1
    mask = torch.arange(64)[None, :] < torch.tensor([64, 10])[:, None]
    assert net(torch.randn(2, 64, 4), mask).shape == (2, 4)
    x = torch.randn(3, 6, 4)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 1, 3])[:, None]
    expected = torch.stack([x[0].mean(0), x[1, 0], x[2, :3].mean(0)])
    torch.testing.assert_close(MaskedMeanQuery()(x, mask), expected)
    torch.testing.assert_close(masked_mean(x, mask), expected)


def test_usage_counts_in_eval_mode_only():
    torch.manual_seed(9)
    pkm = ProductKeyMemory(input_size=6, value_size=4, n_keys=4, topk=3, heads=2, key_size=4)
    pkm.train()
    pkm(torch.randn(10, 6))
    assert pkm.usage_counts is None and pkm.key_usage() is None
    pkm.eval()
    pkm(torch.randn(10, 6))
    pkm(torch.randn(7, 6))
    assert int(pkm.usage_counts.sum()) == 17 * 2 * 3
    assert 0 < pkm.key_usage() <= 1
    pkm.reset_usage()
    assert pkm.usage_counts is None


def test_lookup_is_an_embedding_not_a_bag():
    """Spec A14: F.embedding of the indices, never a summed EmbeddingBag."""
    torch.manual_seed(10)
    pkm = ProductKeyMemory(input_size=4, value_size=3, n_keys=4, topk=4, key_size=4, weighting="none").eval()
    out = pkm(torch.randn(2, 4))
    assert out.slots.shape == (2, 4, 3)
    assert torch.equal(out.slots, F.embedding(out.indices, pkm.values).reshape(2, 4, 3))
    assert not torch.allclose(out.slots[:, 0], out.slots.sum(1))
